"""Issue 24: the HTTP backend against a loopback OpenAI-compatible stub. What the server refuses (a 400
body in OpenAI's, vLLM's, SGLang's or FastAPI's shape, a plain-text page, an error event in the middle
of a stream) arrives as a BackendError in the server's own words; so do a refused connection and a
server that stops answering. The context is the model card's `max_model_len`, and an assumption, said
as one, when the server gives none."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from v4.agent.backends import BackendError, HttpBackend
from v4.agent.backends.http import ASSUMED_CONTEXT, server_message
from v4.agent.bootstrap import ANSWER_RESERVE, describe_backend, open_backend
from v4.agent.chat_format import Message
from v4.agent.options import BackendOptions

OVER = ("This model's maximum context length is 2048 tokens. However, you requested 9000 tokens "
        "(4904 in the messages, 4096 in the completion).")
HELLO = [Message("user", "hello")]


@dataclass
class Reply:
    """What the stub answers on one route."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    events: list[bytes] = field(default_factory=list)  # sent one by one, `pause` apart (an event stream)
    pause: float = 0.0
    delay: float = 0.0  # before the status line


def sse(*chunks: object) -> list[bytes]:
    return [f"data: {c if c == '[DONE]' else json.dumps(c)}\n\n".encode() for c in chunks]


def card(**extra: object) -> Reply:
    return Reply(body=json.dumps({"object": "list", "data": [{"id": "served", "object": "model"} | extra]}).encode())


@pytest.fixture()
def stub() -> Iterator[tuple[str, dict[str, Reply]]]:
    """(base URL, routes): set `routes["/v1/models"]` and `routes["/v1/chat/completions"]` to Replies."""
    routes: dict[str, Reply] = {}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.command == "POST":
                self.rfile.read(int(self.headers["Content-Length"]))
            reply = routes.get(self.path, Reply(404, b'{"detail": "Not Found"}'))
            time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "text/event-stream" if reply.events else reply.content_type)
                self.end_headers()
                self.wfile.write(reply.body)
                for event in reply.events:
                    self.wfile.write(event)
                    self.wfile.flush()
                    time.sleep(reply.pause)
            except OSError:  # the client gave up (the timeout tests)
                pass

        do_GET = do_POST = _answer  # noqa: N815 - http.server's names

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


def answer(backend: HttpBackend) -> str:
    return "".join(backend.stream(HELLO, 16))


@pytest.mark.parametrize("body", [
    {"error": {"message": OVER, "type": "invalid_request_error", "param": "messages",
               "code": "context_length_exceeded"}},  # OpenAI
    {"object": "error", "message": OVER, "type": "BadRequestError", "param": None, "code": 400},  # vLLM, SGLang
    {"error": {"object": "error", "message": OVER, "type": "BadRequestError", "code": 400}},  # vLLM >= 0.10
    {"detail": OVER},  # FastAPI's HTTPException
], ids=["openai", "vllm-sglang", "vllm-nested", "fastapi"])
def test_a_400_body_is_the_error_in_the_servers_words(stub, body: dict) -> None:
    url, routes = stub
    routes["/v1/chat/completions"] = Reply(400, json.dumps(body).encode())
    with pytest.raises(BackendError) as caught:
        answer(HttpBackend(url, "served", max_model_len=2048))
    assert str(caught.value) == f"{url}/v1/chat/completions answered 400 Bad Request: {OVER}"


def test_a_plain_text_or_html_error_page_is_the_error(stub) -> None:
    url, routes = stub
    routes["/v1/chat/completions"] = Reply(502, b"<html><body><h1>502 Bad Gateway</h1>\n<p>nginx</p></body></html>",
                                           "text/html")
    with pytest.raises(BackendError, match=r"answered 502 Bad Gateway: 502 Bad Gateway nginx$"):
        answer(HttpBackend(url, "served", max_model_len=2048))


def test_an_error_event_mid_stream_ends_the_answer_with_its_message(stub) -> None:
    url, routes = stub
    routes["/v1/chat/completions"] = Reply(events=sse(
        {"choices": [{"delta": {"content": "Sure"}}]},
        {"error": {"message": "the engine ran out of KV cache blocks", "type": "InternalServerError", "code": 500}},
        "[DONE]"))
    backend = HttpBackend(url, "served", max_model_len=2048)
    stream = backend.stream(HELLO, 16)
    assert next(stream) == "Sure"
    with pytest.raises(BackendError, match="stopped with an error: the engine ran out of KV cache blocks$"):
        next(stream)


def test_a_refused_connection_says_so(stub) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(BackendError, match=r"cannot reach .*: connection refused \(is the server running\?\)"):
        HttpBackend(url, "served").context_length
    with pytest.raises(BackendError, match="connection refused"):
        answer(HttpBackend(url, "served", max_model_len=2048))


def test_a_server_that_does_not_answer_or_stops_sending_times_out(stub) -> None:
    url, routes = stub
    routes["/v1/chat/completions"] = Reply(delay=1.0, events=sse({"choices": [{"delta": {"content": "x"}}]}))
    with pytest.raises(BackendError, match=r"did not answer within 0.2 s"):
        answer(HttpBackend(url, "served", max_model_len=2048, timeout_s=0.2))
    routes["/v1/chat/completions"] = Reply(events=sse({"choices": [{"delta": {"content": "x"}}]}, "[DONE]"), pause=1.0)
    with pytest.raises(BackendError, match=r"stopped sending: nothing for 0.2 s"):
        answer(HttpBackend(url, "served", max_model_len=2048, timeout_s=0.2))


def test_the_context_is_the_model_cards_max_model_len(stub) -> None:
    url, routes = stub
    routes["/v1/models"] = card(max_model_len=2048)
    routes["/v1/chat/completions"] = Reply(events=sse({"choices": [{"delta": {"content": "hi"}}]},
                                                      {"choices": [], "usage": {"prompt_tokens": 5,
                                                                                "completion_tokens": 1}}, "[DONE]"))
    options = BackendOptions(endpoint=url)
    chosen = open_backend(options)
    assert chosen.backend.context_length == 2048 and chosen.backend.model == "served"
    assert chosen.budget == 2048 - 2048 // 4  # a small context keeps a quarter for the conversation and answer
    info = describe_backend(chosen, options)
    assert info.context_text() == "context 2,048 tokens" and info.context_note is None
    assert answer(chosen.backend) == "hi" and chosen.backend.last_usage.prompt_tokens == 5


def test_a_server_that_does_not_give_its_context_is_assumed_and_said(stub) -> None:
    url, routes = stub
    routes["/v1/models"] = card()  # DeepSeek's API: ids only
    options = BackendOptions(endpoint=url, endpoint_model="served")
    chosen = open_backend(options)
    assert chosen.backend.context_length == ASSUMED_CONTEXT
    assert chosen.budget == ASSUMED_CONTEXT - ANSWER_RESERVE
    text = describe_backend(chosen, options).context_text()
    assert text == (f"context {ASSUMED_CONTEXT:,} tokens (assumed {ASSUMED_CONTEXT:,} tokens: {url}/v1/models "
                    "does not give served's context (no max_model_len))")


def test_a_server_without_a_model_list_is_assumed_when_the_model_is_named(stub) -> None:
    url, _ = stub  # /v1/models answers 404
    backend = HttpBackend(url, "served")
    assert backend.context_length == ASSUMED_CONTEXT
    assert backend.context_note == f"assumed 131,072 tokens: {url}/v1/models answered 404 Not Found: Not Found"
    with pytest.raises(BackendError, match="answered 404 Not Found: Not Found; pass the model's name"):
        HttpBackend(url).context_length


@pytest.mark.parametrize(("body", "message"), [
    (b'{"error": "rate limited"}', "rate limited"),
    (b'{"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}', "field required"),
    (b'{"error": {"code": 7}}', '{"code": 7}'),
    (b"", "(no message)"),
    (b"Internal Server Error\n", "Internal Server Error"),
    (b"x" * 600, "x" * 500 + "..."),
])
def test_server_message_of_odd_bodies(body: bytes, message: str) -> None:
    assert server_message(body) == message
