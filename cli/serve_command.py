"""`v4 serve`: the embedded engine as an OpenAI-compatible endpoint (loopback by default).

It says what it does on stderr: "listening on URL (model NAME, context N tokens)" once it accepts
connections, one access-log line per request (with its tokens), and a line when it stops.

Exit codes: 0 stopped (SIGTERM or Ctrl-C), 1 the model could not be loaded or (with `--parallel`) a
worker died or failed, 2 bad options.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .backend_args import add_engine_arguments, engine_options
from .exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .progress import load_engine

if TYPE_CHECKING:
    from v4.model.engine import Engine

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# On a CPU a request holds at most this many tokens unless --max-model-len says otherwise: a CPU
# prefills 1-3K tokens a second, so a longer prompt would hold the server for minutes.
CPU_MAX_MODEL_LEN = 32_768


def build(parser: argparse.ArgumentParser) -> None:
    """`v4 serve --model DIR`'s options (named as vLLM names them)."""
    parser.add_argument("--model", type=Path, default=os.environ.get("V4_MODEL") or None, metavar="DIR",
                        help="checkpoint directory (default: $V4_MODEL)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    add_engine_arguments(parser)
    parser.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                        help="the model names clients may ask for; /v1/models lists the first first "
                             "(default: the directory name); any other name is a 404")
    parser.add_argument("--max-model-len", type=int, default=None, metavar="TOKENS",
                        help=f"tokens a request may hold, prompt and answer (default: the model's context; "
                             f"{CPU_MAX_MODEL_LEN:,} on CPU)")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="requests decoding at once (continuous batching)")
    parser.add_argument("--max-body-bytes", type=int, default=4 << 20,
                        help="refuse larger request bodies with 413 (default: 4 MiB)")


def run(args: argparse.Namespace) -> int:
    if args.model is None:
        return _fail("needs --model DIR (or $V4_MODEL)", EXIT_USAGE)
    if args.max_model_len is not None and args.max_model_len < 2:
        return _fail(f"--max-model-len must be at least 2, got {args.max_model_len}", EXIT_USAGE)
    try:
        engine = load_engine(args.model, engine_options(args))
    except Exception as exc:  # noqa: BLE001 - config, weights or I/O: say which and stop
        return _fail(f"cannot load {args.model}: {exc}", EXIT_FAILED)
    try:
        return _serve(args, engine)
    finally:
        engine.close()  # stops the workers of a --parallel engine


def _serve(args: argparse.Namespace, engine: Engine) -> int:
    """Serve `engine` until SIGTERM, Ctrl-C or (with --parallel) a worker's failure."""
    from v4.agent.backends import BackendError, EmbeddedBackend
    from v4.agent.bootstrap import ANSWER_RESERVE, context_words
    from v4.agent.chat_format import chat_format_for
    from v4.model.parallel_driver import DrivenEngine
    from .openai_server import ServeConfig, create_app, make_server

    context = engine.context_length  # the model's, as `v4 model info` reports it
    if args.max_model_len is not None and args.max_model_len > context:
        return _fail(f"--max-model-len {args.max_model_len:,} is over the model's context, {context:,} tokens",
                     EXIT_USAGE)
    length = args.max_model_len or (min(CPU_MAX_MODEL_LEN, context) if engine.device.type == "cpu" else context)
    try:
        backend = EmbeddedBackend(engine, chat_format_for(args.model), length)
    except BackendError as exc:
        return _fail(str(exc), EXIT_FAILED)
    names = tuple(args.served_model_name or [args.model.resolve().name])
    try:
        config = ServeConfig(names, args.api_key, min(512, backend.context_length - ANSWER_RESERVE // 8),
                             args.max_num_seqs, args.max_body_bytes)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    served = [0]

    def log(line: str) -> None:
        served[0] += 1
        print(line, file=sys.stderr, flush=True)

    def listening(url: str) -> None:
        also = f"; also as {', '.join(names[1:])}" if len(names) > 1 else ""
        also += f", over {engine.ranks} ranks" if isinstance(engine, DrivenEngine) else ""
        print(f"v4 serve: listening on {url} (model {names[0]}{also}, "
              f"{context_words(context, backend.context_length, 'this server')})", file=sys.stderr, flush=True)

    app = create_app(backend, config, log)
    if args.host not in LOOPBACK and not args.api_key:
        print(f"v4 serve: warning: {args.host} is not a loopback address and there is no --api-key: anyone "
              "who can reach it can use it", file=sys.stderr)
    def stopped() -> None:
        print(f"v4 serve: stopped after {served[0]:,} request{'' if served[0] == 1 else 's'}", file=sys.stderr,
              flush=True)

    server = make_server(app, args.host, args.port, listening, stopped)
    failures: list[Exception] = []
    if isinstance(engine, DrivenEngine):
        def worker_failed(error: Exception) -> None:  # from the driver's watching thread
            failures.append(error)
            print(f"v4 serve: {error}; stopping", file=sys.stderr, flush=True)
            server.stop()  # as SIGTERM stops it: open requests fail, then it exits 1

        engine.driver.on_failure(worker_failed)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: the server has stopped cleanly
        pass
    return EXIT_FAILED if failures else EXIT_OK


def _fail(message: str, code: int) -> int:
    print(f"v4 serve: {message}", file=sys.stderr)
    return code
