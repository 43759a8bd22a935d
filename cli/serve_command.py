"""`v4 serve`: the embedded engine as an OpenAI-compatible endpoint (loopback by default).

Exit codes: 0 stopped (SIGTERM or Ctrl-C), 1 the model could not be loaded, 2 bad options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backend_args import add_engine_arguments, engine_options
from .exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .progress import load_engine

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build(parser: argparse.ArgumentParser) -> None:
    """`v4 serve --model DIR`'s options (named as vLLM names them)."""
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    add_engine_arguments(parser)
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients use (default: the directory name)")
    parser.add_argument("--max-model-len", type=int, default=None, help="context tokens (default: 32,768 on CPU)")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="requests decoding at once (continuous batching)")
    parser.add_argument("--max-body-bytes", type=int, default=4 << 20,
                        help="refuse larger request bodies with 413 (default: 4 MiB)")


def run(args: argparse.Namespace) -> int:
    from v4.agent.backends import BackendError, EmbeddedBackend
    from v4.agent.bootstrap import ANSWER_RESERVE
    from v4.agent.chat_format import chat_format_for
    from .openai_server import ServeConfig, create_app, make_server

    try:
        engine = load_engine(args.model, engine_options(args))
    except Exception as exc:  # noqa: BLE001 - config, weights or I/O: say which and stop
        print(f"v4 serve: cannot load {args.model}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    length = args.max_model_len or (32_768 if engine.device.type == "cpu" else None)
    try:
        backend = EmbeddedBackend(engine, chat_format_for(args.model), length)
    except BackendError as exc:
        print(f"v4 serve: {exc}", file=sys.stderr)
        return EXIT_FAILED
    name = args.served_model_name or args.model.resolve().name
    try:
        config = ServeConfig(name, args.api_key, min(512, backend.context_length - ANSWER_RESERVE // 8),
                             args.max_num_seqs, args.max_body_bytes)
    except ValueError as exc:
        print(f"v4 serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    app = create_app(backend, config)
    if args.host not in LOOPBACK and not args.api_key:
        print(f"v4 serve: listening on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    make_server(app, args.host, args.port).run()
    return EXIT_OK
