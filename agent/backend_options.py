"""Choosing a backend from the command line: `--model DIR` (embedded engine), `--endpoint URL`
(OpenAI-compatible HTTP) or `--replay FILE` (scripted answers), shared by every command that talks
to a model."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .backends import Backend, BackendError, EmbeddedBackend, HttpBackend, ReplayBackend
from .model_command import add_engine_arguments

CPU_DEFAULT_BUDGET = 8_192  # an engine on CPU prefills ~1-3k tokens/s: a session starts in seconds
ANSWER_RESERVE = 4_096


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (one of)")
    group.add_argument("--model", metavar="DIR", type=Path, default=os.environ.get("V4_MODEL"),
                       help="checkpoint directory for the embedded engine (default: $V4_MODEL)")
    group.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server (vLLM, SGLang, v4 serve)")
    group.add_argument("--api-key", default=os.environ.get("V4_API_KEY"), help="the endpoint's key ($V4_API_KEY)")
    group.add_argument("--endpoint-model", metavar="NAME", help="model name at the endpoint (default: its first)")
    group.add_argument("--replay", metavar="FILE", type=Path, help="scripted answers (JSON list), for tests and demos")
    add_engine_arguments(group)
    group.add_argument("--no-engram", action="store_true", help="do not read or write the Engram store of prefilled states")
    group.add_argument("--engram-dir", type=Path, default=None, help="Engram store directory (default: $V4_ENGRAM_DIR "
                       "or the user cache dir)")
    parser.add_argument("--budget", type=int, default=None,
                        help="repository tokens in the context (default: the model's context; 8,192 on CPU)")
    parser.add_argument("--include-secrets", action="store_true",
                        help="put files that look like credentials (.env, keys, tokens in code) in the context too")


def secrets_warning(endpoint: str | None, secrets: list) -> str | None:
    """Issue 22: the warning for files that look like credentials and would go to a remote endpoint
    (only --include-secrets puts them in the context); None when there is nothing to say."""
    if not endpoint or not secrets:
        return None
    listed = "; ".join(f"{s.path} ({s.reason})" for s in secrets[:10])
    more = f"; and {len(secrets) - 10} more" if len(secrets) > 10 else ""
    return (f"warning: --include-secrets: {len(secrets)} file(s) that look like credentials will be sent to "
            f"{endpoint}: {listed}{more}")


def warn_secrets(args: argparse.Namespace, secrets: list) -> None:
    """Print `secrets_warning` on stderr; called after planning, before anything is sent."""
    message = secrets_warning(getattr(args, "endpoint", None), secrets)
    if message:
        print(f"v4: {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class ChosenBackend:
    backend: Backend
    budget: int
    tokenizer_dir: Path | None  # whose tokenizer counts the repository's tokens


def backend_from_args(args: argparse.Namespace) -> ChosenBackend:
    """The backend the arguments name; BackendError with what to pass when they name none or several."""
    chosen = [name for name in ("model", "endpoint", "replay") if getattr(args, name)]
    if len(chosen) != 1:
        raise BackendError("choose one model: --model DIR (or $V4_MODEL), --endpoint URL or --replay FILE"
                           + (f" (got {', '.join('--' + c for c in chosen)})" if chosen else ""))
    if args.replay:
        backend: Backend = ReplayBackend.from_file(args.replay)
        return ChosenBackend(backend, args.budget or 1_000_000 - ANSWER_RESERVE, None)
    if args.endpoint:
        backend = HttpBackend(args.endpoint, args.endpoint_model, args.api_key)
        return ChosenBackend(backend, args.budget or backend.context_length - ANSWER_RESERVE, None)
    return _embedded(args)


def _embedded(args: argparse.Namespace) -> ChosenBackend:
    from v4 import model
    from v4.model.config import ConfigError
    from v4.model.weights import WeightsError

    from .chat_format import chat_format_for
    from .model_command import engine_options, load_with_progress

    store = None
    if not args.no_engram:  # a misdirected or read-only store is refused before the model loads
        from v4.model.engram_store import EngramStore, StoreError, default_store_dir

        try:
            store = EngramStore(args.engram_dir or default_store_dir(), warn=lambda m: print(m, file=sys.stderr))
            store.prepare()
        except StoreError as exc:
            raise BackendError(str(exc)) from exc
    try:
        engine = load_with_progress(args.model, show=sys.stderr.isatty(), **engine_options(args))
    except (ConfigError, WeightsError, OSError, model.EngineInputError) as exc:
        raise BackendError(f"cannot load {args.model}: {exc}") from exc
    limit = min(engine.config.max_seq_len, engine.model.config.max_position_embeddings)
    reserve = min(ANSWER_RESERVE, limit // 4)  # room for the conversation and the answer
    default = CPU_DEFAULT_BUDGET if engine.device.type == "cpu" else limit - reserve
    budget = max(min(args.budget or default, limit - reserve), 1)
    # the state is sized for the repository, the conversation and an answer, not for the model's limit
    context = min(limit, budget + 4 * reserve)
    backend = EmbeddedBackend(engine, chat_format_for(args.model), context, store)
    return ChosenBackend(backend, budget, args.model)
