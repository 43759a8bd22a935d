"""`v4 serve`: the embedded engine behind an OpenAI-compatible HTTP API (FastAPI + uvicorn, the stack
vLLM uses): `/v1/models`, `/v1/chat/completions` and `/v1/completions`, streamed as server-sent events
or whole. One engine, one decode state: requests run one at a time, and consecutive chats that share
a prefix (the same repository, a longer conversation) reuse the prefilled state. Concurrent requests
decode together (agent/batcher.py: continuous batching on the static batched decoder, up to
`--max-num-seqs` at once); a model the batcher cannot run (Engram layers) serves one at a time.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (`Request`,
# imported lazily inside create_app so that `v4` starts without loading the web stack) at run time.
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .backends import BackendError, EmbeddedBackend, Usage
from .batcher import DecodeBatcher
from .chat_format import ChatFormatError, Message
from .model_command import add_engine_arguments


@dataclass(slots=True)
class ServeConfig:
    model_name: str
    api_key: str | None = None
    default_max_tokens: int = 512
    max_batch: int = 8  # requests decoding at once (vLLM's --max-num-seqs)


def create_app(backend: EmbeddedBackend, config: ServeConfig) -> object:
    """The FastAPI application over `backend`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="v4", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # without a batcher: one engine state, one request at a time
    try:
        batcher: DecodeBatcher | None = DecodeBatcher(backend, config.max_batch)
    except BackendError:
        batcher = None
    app.state.batcher = batcher
    created = int(time.time())

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    def authorised(request: Request) -> bool:
        return config.api_key is None or request.headers.get("authorization") == f"Bearer {config.api_key}"

    @app.get("/v1/models")
    def models(request: Request) -> object:
        if not authorised(request):
            return error(401, "missing or wrong API key", "authentication_error")
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": created,
                                            "owned_by": "v4", "max_model_len": backend.context_length}]}

    async def body_of(request: Request) -> dict | JSONResponse:
        if not authorised(request):
            return error(401, "missing or wrong API key", "authentication_error")
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        return body

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> object:
        body = await body_of(request)
        if not isinstance(body, dict):
            return body
        try:
            messages = [_message(m) for m in body.get("messages") or []]
            if not messages:
                raise ValueError("messages must be a non-empty list")
            ids = backend.encode(messages)
        except (ValueError, TypeError, ChatFormatError) as exc:
            return error(400, str(exc))
        return await run_in_threadpool(respond, body, ids, True)  # a whole answer waits off the event loop

    @app.post("/v1/completions")
    async def completions(request: Request) -> object:
        body = await body_of(request)
        if not isinstance(body, dict):
            return body
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return error(400, "prompt must be a non-empty string")
        ids = backend.tokenizer.encode(prompt, add_special_tokens=False).ids
        return await run_in_threadpool(respond, body, ids, False)

    def respond(body: dict, ids: list[int], chat: bool) -> object:
        try:
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or config.default_max_tokens)
            temperature = 1.0 if body.get("temperature") is None else float(body["temperature"])  # OpenAI's default
            top_p = float(body.get("top_p") or 1.0)
            seed = int(body.get("seed") or 0)
        except (TypeError, ValueError) as exc:
            return error(400, f"bad sampling parameter: {exc}")
        if max_tokens <= 0:
            return error(400, "max_tokens must be positive")
        stream_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        usage = Usage()

        def pieces() -> Iterator[str]:
            nonlocal usage
            if batcher is not None:
                generation = batcher.submit(ids, max_tokens, temperature, top_p, seed)
                yield from generation.pieces()
                usage = generation.usage
                return
            with lock:
                yield from backend.stream_ids(ids, max_tokens, temperature, top_p, seed)
                usage = backend.last_usage

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_events(pieces(), lambda: usage, stream_id, config.model_name, chat,
                                             include_usage, max_tokens), media_type="text/event-stream")
        try:
            text = "".join(pieces())
        except BackendError as exc:
            return error(400, str(exc))
        finish = _finish(usage, max_tokens)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        return {"id": stream_id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": config.model_name, "choices": [choice], "usage": _usage(usage)}

    return app


def _message(data: object) -> Message:
    if not isinstance(data, dict) or data.get("role") not in ("system", "user", "assistant"):
        raise ValueError("each message needs a role of system, user or assistant")
    content = data.get("content")
    if isinstance(content, list):  # the OpenAI parts form: keep the text parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise ValueError("message content must be a string")
    return Message(data["role"], content)


def _usage(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def _finish(usage: Usage, max_tokens: int) -> str:
    return "length" if usage.completion_tokens >= max_tokens else "stop"


def _events(pieces: Iterator[str], usage_of: Callable[[], Usage], stream_id: str, model_name: str, chat: bool,
            include_usage: bool, max_tokens: int) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict | None, usage: dict | None = None) -> str:
        chunk = {"id": stream_id, "object": kind, "created": created, "model": model_name,
                 "choices": [] if choice is None else [choice]}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    if chat:
        yield event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
    try:
        for piece in pieces:
            body = {"content": piece} if chat else None
            yield event({"index": 0, "delta": body, "finish_reason": None} if chat else
                        {"index": 0, "text": piece, "finish_reason": None})
    except BackendError as exc:
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'invalid_request_error'}})}\n\n"
        yield "data: [DONE]\n\n"
        return
    finish = _finish(usage_of(), max_tokens)
    yield event({"index": 0, "delta": {}, "finish_reason": finish} if chat else
                {"index": 0, "text": "", "finish_reason": finish})
    if include_usage:
        yield event(None, _usage(usage_of()))
    yield "data: [DONE]\n\n"


def add_parser(commands: object) -> None:
    from pathlib import Path

    serve = commands.add_parser("serve", help="serve the engine as an OpenAI-compatible endpoint",
                                description="An OpenAI-compatible server on the embedded engine (loopback by default).")
    serve.add_argument("--model", type=Path, required=True, metavar="DIR")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    add_engine_arguments(serve)
    serve.add_argument("--served-model-name", default=None, help="the model id clients use (default: the directory name)")
    serve.add_argument("--max-model-len", type=int, default=None, help="context tokens (default: 32,768 on CPU)")
    serve.add_argument("--max-num-seqs", type=int, default=8, help="requests decoding at once (continuous batching)")


def run(args: object) -> int:
    import sys

    import uvicorn

    from .backend_options import ANSWER_RESERVE
    from .chat_format import chat_format_for
    from .model_command import engine_options, load_with_progress

    try:
        engine = load_with_progress(args.model, show=sys.stderr.isatty(), **engine_options(args))
    except Exception as exc:  # config, weights or I/O: say which and stop
        print(f"v4 serve: cannot load {args.model}: {exc}", file=sys.stderr)
        return 1
    length = args.max_model_len or (32_768 if engine.device.type == "cpu" else None)
    try:
        backend = EmbeddedBackend(engine, chat_format_for(args.model), length)
    except BackendError as exc:
        print(f"v4 serve: {exc}", file=sys.stderr)
        return 1
    name = args.served_model_name or args.model.resolve().name
    if args.max_num_seqs < 1:
        print("v4 serve: --max-num-seqs must be at least 1", file=sys.stderr)
        return 2
    app = create_app(backend, ServeConfig(name, args.api_key, min(512, backend.context_length - ANSWER_RESERVE // 8),
                                          args.max_num_seqs))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"v4 serve: listening on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
