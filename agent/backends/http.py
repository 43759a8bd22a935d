"""The HTTP backend: an OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang, `v4 serve`,
a hosted V4), streamed as server-sent events; the endpoint keeps its own prefix cache."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..chat_format import Message
from .protocol import BackendError, Usage


@dataclass
class HttpBackend:
    """An OpenAI-compatible `/v1/chat/completions` endpoint, streamed (server-sent events)."""

    endpoint: str
    model: str | None = None
    api_key: str | None = None
    context_length: int = 1_048_576
    timeout_s: float = 600.0
    name: str = "http"
    last_usage: Usage = field(default_factory=Usage)

    def _url(self, path: str) -> str:
        base = self.endpoint.rstrip("/")
        return base + path if base.endswith("/v1") else base + "/v1" + path

    def _request(self, path: str, body: dict | None = None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(self._url(path), data=data, headers=headers, method="POST" if data else "GET")

    def _model_name(self) -> str:
        if self.model is None:
            try:
                with urllib.request.urlopen(self._request("/models"), timeout=30) as response:
                    self.model = json.load(response)["data"][0]["id"]
            except (OSError, ValueError, KeyError, IndexError) as exc:
                raise BackendError(f"{self._url('/models')}: cannot list the endpoint's models ({exc}); "
                                   "pass the model name") from exc
        return self.model

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """The endpoint's answer as its events arrive; usage from its final usage event."""
        body = {"model": self._model_name(), "stream": True, "max_tokens": max_tokens, "temperature": temperature,
                "messages": [{"role": m.role, "content": m.content} for m in messages],
                "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        self.last_usage = Usage()
        try:
            response = urllib.request.urlopen(self._request("/chat/completions", body), timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise BackendError(f"{self._url('/chat/completions')} answered {exc.code}: {detail}") from exc
        except OSError as exc:
            raise BackendError(f"cannot reach {self.endpoint}: {exc}") from exc
        with response:
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
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    details = usage.get("prompt_tokens_details") or {}
                    self.last_usage = Usage(usage.get("prompt_tokens", 0), details.get("cached_tokens", 0) or 0,
                                            usage.get("completion_tokens", 0))
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
        self.last_usage.seconds = time.perf_counter() - started

    def count_tokens(self, text: str) -> int | None:
        return None
