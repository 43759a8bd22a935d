"""What `v4 serve` accepts (`openai_server.py` answers): each request checked field by field as
OpenAI's API defines it, a refusal being a RequestError in OpenAI's error shape (`{"error": {"message",
"type", "param", "code"}}`) that names the field: the sampling settings, the chat messages, the API
key and the model name (a name the server does not serve is a 404 `model_not_found`, as vLLM answers).
"""

from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass

from v4.agent.chat_format import Message

ROLES = ("system", "developer", "user", "assistant")  # developer: OpenAI's newer name for system
MAX_STOP_STRINGS = 4  # as OpenAI allows


class RequestError(Exception):
    """A request the server refuses: OpenAI's error JSON with `param` naming the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(slots=True)
class Sampling:
    """A request's validated generation settings."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def parse_sampling(body: dict, default_max_tokens: int, context_length: int) -> Sampling:
    """The sampling fields as OpenAI's API defines them; RequestError naming the first bad one."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name)
    if max_tokens is not None and not 1 <= max_tokens <= context_length:
        raise RequestError(f"{name} must be between 1 and the context length, {context_length:,}; got {max_tokens}",
                           name)
    temperature = _number(body, "temperature", 0.0, 2.0, default=1.0)  # OpenAI's default
    top_p = _number(body, "top_p", 0.0, 1.0, default=1.0, open_low=True)
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise RequestError(f"n must be 1: this server returns one choice per request (got {n})", "n")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if _number(body, penalty, -2.0, 2.0, default=0.0) != 0.0:
            raise RequestError(f"{penalty} is not supported by this server: only 0 is accepted", penalty)
    seed = _integer(body, "seed")
    if seed is not None and not -(1 << 63) <= seed < (1 << 64):
        raise RequestError("seed must fit in 64 bits", "seed")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object or null", "stream_options")
    include_usage = (options or {}).get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise RequestError("stream_options.include_usage must be true or false", "stream_options.include_usage")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"stop must be a non-empty string or a list of up to {MAX_STOP_STRINGS} of them", "stop")
    return Sampling(max_tokens or default_max_tokens, temperature, top_p, seed or 0, tuple(stops), bool(stream),
                    bool(include_usage))


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(f"{name} must be an integer, got {json.dumps(value)}", name)
    return value


def _number(body: dict, name: str, low: float, high: float, default: float, open_low: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{name} must be a number, got {json.dumps(value)}", name)
    if not (low < value if open_low else low <= value) or value > high:
        raise RequestError(f"{name} must be in {'(' if open_low else '['}{low:g}, {high:g}], got {value}", name)
    return float(value)


def parse_messages(value: object) -> list[Message]:
    """OpenAI chat messages -> Messages; RequestError naming the first bad one."""
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list", "messages")
    messages = []
    for index, data in enumerate(value):
        param = f"messages[{index}]"
        if not isinstance(data, dict):
            raise RequestError(f"{param} must be an object with a role and a content", param)
        role = data.get("role")
        if role not in ROLES:
            raise RequestError(f"{param}.role must be one of {', '.join(ROLES)}; got {json.dumps(role)}",
                               f"{param}.role")
        content = data.get("content")
        if isinstance(content, list):  # the OpenAI parts form: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(f"{param}.content parts must all be text parts", f"{param}.content")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise RequestError(f"{param}.content must be a string or a list of text parts", f"{param}.content")
        messages.append(Message("system" if role == "developer" else role, content))
    return messages


def key_matches(header: str | None, api_key: str) -> bool:
    """`Authorization: Bearer KEY`, the scheme in any case, the key compared in constant time."""
    scheme, _, token = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def served_model(body: dict, names: tuple[str, ...]) -> str:
    """The model a request names, one of `names` (the first when it names none); a name this server
    does not serve is a 404 `model_not_found`, as vLLM and OpenAI answer it."""
    model = body.get("model")
    if model is None:
        return names[0]
    if not isinstance(model, str):
        raise RequestError(f"model must be a string, got {json.dumps(model)}", "model")
    if model not in names:
        raise RequestError(f"The model `{model}` does not exist: this server serves {', '.join(names)}", "model",
                           404, code="model_not_found")
    return model
