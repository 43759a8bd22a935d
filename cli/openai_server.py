"""The app `v4 serve` runs (`serve_command.py`): the embedded engine behind an OpenAI-compatible HTTP
API (FastAPI + uvicorn, the stack vLLM uses): `/v1/models`, `/v1/chat/completions` and
`/v1/completions`, streamed as server-sent events or whole; requests are checked by
`openai_requests.py`. Concurrent requests decode together (model/scheduler.py: continuous batching on the static
batched decoder, up to `--max-num-seqs` at once) and consecutive chats that share a prefix reuse the
prefilled state; a model the scheduler cannot run (Engram layers) serves one at a time.

Issue 22 hardened it: every route needs the key when one is set; a body over `max_body_bytes` is a 413
and a prompt over the token limit a 400, tokenized in a worker thread; every sampling field is checked
as OpenAI defines it (400 naming it); a client that goes away frees its batch row before the next
step; SIGTERM fails every open request and exits within SHUTDOWN_GRACE_S. Issue 24: one access-log
line per request (with its tokens), a line once the server listens, and a 404 for a model name it
does not serve.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (`Request`,
# imported lazily inside create_app so that `v4` starts without loading the web stack) at run time.
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus

from v4.agent.backends import BackendError, EmbeddedBackend
from v4.agent.chat_format import ChatFormatError, Message
from v4.model.runner import AnswerStats, RunnerError
from v4.model.scheduler import DONE, Generation, Scheduler

from .openai_requests import RequestError, Sampling, key_matches, parse_messages, parse_sampling, served_model

SHUTDOWN_GRACE_S = 1.0  # after SIGTERM, how long open responses get to end before uvicorn drops them


@dataclass(slots=True)
class ServeConfig:
    """What `v4 serve` serves under which names, and its limits."""

    model_names: tuple[str, ...]  # the names clients may ask for; /v1/models lists the first first
    api_key: str | None = None
    default_max_tokens: int = 512
    max_batch: int = 8  # requests decoding at once (vLLM's --max-num-seqs)
    max_body_bytes: int = 4 << 20  # a request body over this is refused (413) before it is read whole
    max_prompt_tokens: int | None = None  # default: the context less one token for the answer

    def __post_init__(self) -> None:
        if not self.model_names or not all(isinstance(n, str) and n for n in self.model_names):
            raise ValueError(f"model_names must be one or more non-empty names, got {self.model_names!r}")
        for name in ("default_max_tokens", "max_batch", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be at least 1, got {self.max_prompt_tokens}")


class _Guard:
    """ASGI middleware in front of every route (docs and schema included): the API key when one is
    set, and a body whose Content-Length is over the limit refused before any of it is read."""

    def __init__(self, app: object, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        from fastapi.responses import JSONResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if self.api_key is not None and not key_matches(headers.get("authorization"), self.api_key):
            refusal = RequestError("missing or wrong API key", None, 401, "invalid_request_error", "invalid_api_key")
        elif not (headers.get("content-length") or "0").isdigit():
            refusal = RequestError("Content-Length is not a number")
        elif int(headers.get("content-length") or 0) > self.max_body_bytes:
            refusal = RequestError(f"the body is over the limit of {self.max_body_bytes:,} bytes", None, 413)
        if refusal is None:
            return await self.app(scope, receive, send)
        extra = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else {}
        await JSONResponse(refusal.body(), refusal.status, headers=extra)(scope, receive, send)


class _AccessLog:
    """ASGI middleware: one line per request once its response has ended (a stream's last event
    included), as uvicorn's access log has it plus the tokens: client, method, path, status, prompt
    and completion tokens, milliseconds."""

    def __init__(self, app: object, log: Callable[[str], None]) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]  # 500: the app failed before it answered

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            generation = scope.get("state", {}).get("generation")
            self.log(access_line(scope, status[0], generation.usage if generation else None,
                                 (time.perf_counter() - started) * 1000))


def access_line(scope: dict, status: int, usage: AnswerStats | None, milliseconds: float) -> str:
    """One access-log line: `127.0.0.1:50312 - "POST /v1/chat/completions HTTP/1.1" 200 OK, 12 prompt
    + 6 completion tokens, 35 ms` (no tokens for a request that generated nothing)."""
    host, port = scope.get("client") or ("-", 0)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:  # 499: nginx's "client closed request"
        phrase = "Client Closed Request" if status == 499 else ""
    tokens = f", {usage.prompt_tokens:,} prompt + {usage.completion_tokens:,} completion tokens" if usage else ""
    return (f'{host}:{port} - "{scope["method"]} {scope["path"]} HTTP/{scope.get("http_version", "1.1")}" '
            f"{status} {phrase}".rstrip() + f"{tokens}, {milliseconds:.0f} ms")


class _SerialRunner:
    """For a model the batcher cannot run (Engram layers): one request at a time on the backend's
    own state, each in its own thread, with the batcher's `submit`/`close` and cancellation."""

    def __init__(self, backend: EmbeddedBackend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def submit(self, ids: list[int], max_tokens: int, temperature: float, top_p: float, seed: int,
               stop: tuple[str, ...], sink: Callable[[object], None]) -> Generation:
        generation = Generation(list(ids), max_tokens, temperature, top_p, seed, stop, sink)
        threading.Thread(target=self._run, args=(generation,), name="v4-serial", daemon=True).start()
        return generation

    def close(self, timeout: float = 1.0) -> None:
        self._closed.set()

    def _run(self, generation: Generation) -> None:
        with self._lock:
            if generation.cancelled:
                return
            stream = self.backend.stream_ids(generation.ids, generation.max_tokens, generation.temperature,
                                             generation.top_p, generation.seed)
            try:
                for piece in stream:
                    if self._closed.is_set():
                        raise BackendError("the server is shutting down")
                    if generation.cancelled:
                        return
                    generation.emit(piece)
            except BackendError as exc:
                generation.emit(exc)
                return
            finally:
                stream.close()  # an abandoned answer still syncs the state back
            generation.usage = self.backend.runner.last_answer
            generation.emit(DONE)


def create_app(backend: EmbeddedBackend, config: ServeConfig, log: Callable[[str], None] | None = None) -> object:
    """The FastAPI application over `backend`; `log` gets one access-log line per request."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="v4", docs_url=None, redoc_url=None)
    app.add_middleware(_Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    if log is not None:  # outside the guard: refused requests are logged too
        app.add_middleware(_AccessLog, log=log)
    try:
        batcher: Scheduler | None = Scheduler(backend.runner, config.max_batch)
    except RunnerError:
        batcher = None
    runner = batcher or _SerialRunner(backend)
    app.state.batcher, app.state.runner = batcher, runner
    created = int(time.time())
    max_prompt_tokens = min(config.max_prompt_tokens or backend.context_length, backend.context_length - 1)
    # Each token covers at most `longest` characters of the prompt (x4 leaves room for normalizers),
    # so a longer text is over the limit without tokenizing it.
    longest = 4 * max(len(token) for token in backend.tokenizer.get_vocab(with_added_tokens=True))

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/v1/models")
    def models() -> object:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "v4",
                                            "max_model_len": backend.context_length} for name in config.model_names]}

    async def body_of(request: Request) -> dict:
        """The JSON body, counted while it arrives (a chunked body has no Content-Length)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise RequestError(f"the body is over the limit of {config.max_body_bytes:,} bytes", None, 413)
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            raise RequestError("the body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object")
        return body

    def tokenize(text: str, param: str) -> list[int]:
        """The prompt's ids, in a worker thread: `encode_batch` lets go of the GIL, `encode` does not."""
        over = RequestError(f"the prompt is over {max_prompt_tokens:,} tokens, the limit of this server", param)
        if len(text) > max_prompt_tokens * longest:
            raise over
        ids = backend.tokenizer.encode_batch([text], add_special_tokens=False)[0].ids
        if len(ids) > max_prompt_tokens:
            raise RequestError(f"the prompt is {len(ids):,} tokens; the limit of this server is "
                               f"{max_prompt_tokens:,}", param)
        if not ids:
            raise RequestError("the prompt is empty", param)
        return ids

    def render(messages: list[Message]) -> list[int]:
        try:
            text = backend.chat_format.render(messages, add_generation_prompt=True)
        except ChatFormatError as exc:
            raise RequestError(str(exc), "messages") from None
        return tokenize(text, "messages")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> object:
        try:
            body = await body_of(request)
            model = served_model(body, config.model_names)
            sampling = parse_sampling(body, config.default_max_tokens, backend.context_length)
            messages = parse_messages(body.get("messages"))
            ids = await run_in_threadpool(render, messages)
        except RequestError as exc:
            return error(exc)
        return await respond(request, sampling, ids, True, model)

    @app.post("/v1/completions")
    async def completions(request: Request) -> object:
        try:
            body = await body_of(request)
            model = served_model(body, config.model_names)
            sampling = parse_sampling(body, config.default_max_tokens, backend.context_length)
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise RequestError("prompt must be a non-empty string", "prompt")
            ids = await run_in_threadpool(tokenize, prompt, "prompt")
        except RequestError as exc:
            return error(exc)
        return await respond(request, sampling, ids, False, model)

    async def respond(request: Request, sampling: Sampling, ids: list[int], chat: bool, model: str) -> object:
        if batcher is None and sampling.stop:
            return error(RequestError("stop is not supported for this model (it decodes one request at a time)",
                                      "stop"))
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()

        def sink(item: object) -> None:  # from the scheduler thread
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the event loop has closed: nobody is listening
                pass

        generation = runner.submit(ids, sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.seed,
                                   sampling.stop, sink)
        request.state.generation = generation  # its usage goes in the access log

        def cancel() -> None:
            generation.cancel()
            items.put_nowait(_GONE)

        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        stream_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if sampling.stream:
            return StreamingResponse(_events(_pieces(items), generation, stream_id, model, chat,
                                             sampling, lambda: (generation.cancel(), watcher.cancel())),
                                     media_type="text/event-stream")
        try:
            text = "".join([piece async for piece in _pieces(items)])
        except (BackendError, RunnerError) as exc:
            return error(RequestError(str(exc), None, 503 if "shutting down" in str(exc) else 400))
        except _ClientGone:
            return error(RequestError("the client went away", None, 499))
        finally:
            generation.cancel()  # a no-op once it has finished
            watcher.cancel()
        finish = _finish(generation.usage, sampling.max_tokens)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        return {"id": stream_id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model, "choices": [choice], "usage": _usage(generation.usage)}

    return app


_GONE = object()  # the client went away: the answer's reader stops


class _ClientGone(Exception):
    pass


async def _pieces(items: asyncio.Queue) -> AsyncIterator[str]:
    while True:
        item = await items.get()
        if item is DONE:
            return
        if item is _GONE:
            raise _ClientGone
        if isinstance(item, BaseException):
            raise item
        yield item


async def _watch_disconnect(request: object, cancel: Callable[[], None]) -> None:
    """Cancel the request's generation once its client disconnects (or its response is complete:
    then the cancel is a no-op)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel()


def _usage(usage: AnswerStats) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def _finish(usage: AnswerStats, max_tokens: int) -> str:
    return "length" if usage.completion_tokens >= max_tokens else "stop"


async def _events(pieces: AsyncIterator[str], generation: Generation, stream_id: str, model_name: str,
                  chat: bool, sampling: Sampling, on_close: Callable[[], object]) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`; `on_close` runs
    however the stream ends (a client that went away included)."""
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict | None, usage: dict | None = None) -> str:
        chunk = {"id": stream_id, "object": kind, "created": created, "model": model_name,
                 "choices": [] if choice is None else [choice]}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    try:
        if chat:
            yield event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        try:
            async for piece in pieces:
                yield event({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat else
                            {"index": 0, "text": piece, "finish_reason": None})
        except (BackendError, RunnerError) as exc:
            yield f"data: {json.dumps(RequestError(str(exc)).body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        except _ClientGone:
            return
        finish = _finish(generation.usage, sampling.max_tokens)
        yield event({"index": 0, "delta": {}, "finish_reason": finish} if chat else
                    {"index": 0, "text": "", "finish_reason": finish})
        if sampling.include_usage:
            yield event(None, _usage(generation.usage))
        yield "data: [DONE]\n\n"
    finally:
        on_close()


def make_server(app: object, host: str, port: int, on_listening: Callable[[str], None] | None = None,
                on_stopped: Callable[[], None] | None = None) -> object:
    """A uvicorn server for `app` that, on SIGTERM or Ctrl-C, stops decoding at once: every open
    request fails (a stream ends with an error event), and what is still open after
    SHUTDOWN_GRACE_S is dropped; `stop()` does the same from any thread. `on_listening` gets its URL (the port bound, for port 0) once it
    accepts connections; `on_stopped` runs once it has shut down (before uvicorn re-raises the
    signal that stopped it)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if self.started and on_listening is not None:
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                on_listening(f"http://{f'[{host}]' if ':' in host else host}:{bound}")

        async def shutdown(self, sockets: list | None = None) -> None:
            await super().shutdown(sockets)
            if on_stopped is not None:
                on_stopped()

        def handle_exit(self, sig: int, frame: object) -> None:
            # In a thread: the signal handler may have interrupted the event loop inside `submit`.
            threading.Thread(target=app.state.runner.close, args=(0.0,), daemon=True).start()
            super().handle_exit(sig, frame)

        def stop(self) -> None:
            """Stop as SIGTERM stops it, from any thread, with no signal to re-raise (a failed engine)."""
            threading.Thread(target=app.state.runner.close, args=(0.0,), daemon=True).start()
            self.should_exit = True

    return Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                 timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
