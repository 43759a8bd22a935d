"""The model options every model-using command shares: `--model DIR` (embedded engine), `--endpoint
URL` (OpenAI-compatible HTTP) or `--replay FILE` (scripted answers), the engine's settings and the
prefix-state store, read into `BackendOptions`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from v4.agent.options import EFFORTS, KV_FORMATS, AgentOptions, BackendOptions, ConversationOptions, EngineOptions


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the model options (defaults from $V4_MODEL, $V4_API_KEY and $V4_STORE_DIR)."""
    group = parser.add_argument_group("model (one of)")
    group.add_argument("--model", metavar="DIR", type=Path, default=os.environ.get("V4_MODEL"),
                       help="checkpoint directory for the embedded engine (default: $V4_MODEL)")
    group.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server (vLLM, SGLang, v4 serve)")
    group.add_argument("--api-key", default=os.environ.get("V4_API_KEY"), help="the endpoint's key ($V4_API_KEY)")
    group.add_argument("--endpoint-model", metavar="NAME", help="model name at the endpoint (default: its first)")
    group.add_argument("--replay", metavar="FILE", type=Path, help="scripted answers (JSON list), for tests and demos")
    add_engine_arguments(group)
    group.add_argument("--no-store", "--no-engram", dest="no_store", action="store_true",
                       help="do not read or write the prefix-state store of prefilled repositories")
    add_store_argument(group)
    parser.add_argument("--budget", type=int, default=None,
                        help="repository tokens in the context (default: the model's context; 8,192 on CPU)")
    parser.add_argument("--include-secrets", action="store_true",
                        help="put files that look like credentials (.env, keys, tokens in code) in the context too")


def add_store_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--store-dir` (`--engram-dir` is its old name, still accepted)."""
    parser.add_argument("--store-dir", "--engram-dir", dest="store_dir", type=Path, metavar="DIR", default=None,
                        help="prefix-state store directory (default: $V4_STORE_DIR or the user cache dir)")


def store_dir(args: argparse.Namespace) -> Path | None:
    """The store directory the arguments or the environment name (None: the store's default)."""
    named = args.store_dir or os.environ.get("V4_STORE_DIR") or os.environ.get("V4_ENGRAM_DIR")
    return Path(named) if named else None


def add_engine_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How the embedded engine runs: device, decode-state format, expert offload (named as vLLM's
    users know them where a counterpart exists)."""
    parser.add_argument("--device", default=None, help="embedded engine device (default: cuda if present)")
    parser.add_argument("--kv-format", choices=KV_FORMATS, default="float",
                        help="decode-state format: the model's dtype, or DeepSeek's FP8 layout (1.8x smaller)")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                           help="GPU memory (GiB) the engine may use: attention, shared experts, head and as many "
                                "routed experts per layer as fit go there, the rest in host memory (default: what "
                                "is free on a CUDA device)")
    placement.add_argument("--offload-experts", type=int, default=None, metavar="N",
                           help="keep routed experts in host memory, N per layer cached on the GPU (instead of "
                                "the number --gpu-memory plans)")
    parser.add_argument("--cpu-threads", type=int, default=None, metavar="N",
                        help="torch threads of an engine on CPU (default: half the cores, no more than are idle)")
    parser.add_argument("--parallel", type=int, default=None, metavar="N",
                        help="run the model over N GPUs of this host (experts and attention heads split over "
                             "them); this process drives N-1 workers it starts (default: every GPU when the "
                             "model does not fit one, else 1; 1 on CPU)")


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The engine options `add_engine_arguments` parsed."""
    return EngineOptions(args.device, args.kv_format, args.offload_experts, args.cpu_threads, args.parallel,
                         args.gpu_memory)


def backend_options(args: argparse.Namespace) -> BackendOptions:
    """The backend options `add_backend_arguments` parsed."""
    return BackendOptions(model=args.model, endpoint=args.endpoint, api_key=args.api_key,
                          endpoint_model=args.endpoint_model, replay=args.replay, engine=engine_options(args),
                          use_store=not args.no_store, store_dir=store_dir(args), budget=args.budget,
                          include_secrets=args.include_secrets)


def print_warning(message: str) -> None:
    """Where the engine's warnings go on the command line (a corrupt store entry, recomputed)."""
    import sys

    print(message, file=sys.stderr, flush=True)


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """Thinking and tools (the commands the model may run, and where)."""
    group = parser.add_argument_group("thinking and tools")
    group.add_argument("--think", action=argparse.BooleanOptionalAction, default=True,
                       help="let the model think before it answers (default: on; --no-think for plain chat)")
    group.add_argument("--effort", choices=EFFORTS, default=None,
                       help="how hard the model thinks (default: the model's own; max asks for the most)")
    group.add_argument("--no-tools", action="store_true",
                       help="the model may not run commands or read files beyond its context")
    group.add_argument("--allow-commands", action="append", default=[], metavar="GLOB",
                       help="run the model's commands that match GLOB without asking (repeatable; headless "
                            "commands run only these, the rest are refused and the model is told)")
    group.add_argument("--allow-network", action="store_true",
                       help="let the model's commands reach the network (default: no network in the sandbox)")
    group.add_argument("--no-sandbox", action="store_true",
                       help="run the model's commands without bubblewrap's confinement (default: refuse to "
                            "run them when the sandbox cannot start)")


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Which saved conversation to continue (`.v4/sessions/`), and whether to save this one."""
    group = parser.add_argument_group("sessions")
    which = group.add_mutually_exclusive_group()
    which.add_argument("-c", "--continue", dest="continue_session", action="store_true",
                       help="continue the last conversation in this repository")
    which.add_argument("--resume", metavar="ID", default=None,
                       help="continue the saved conversation ID (or the start of it; `v4 sessions` lists them)")
    group.add_argument("--no-save", action="store_true",
                       help="do not save this conversation under .v4/sessions/")


def conversation_options(args: argparse.Namespace) -> ConversationOptions:
    """The session options `add_session_arguments` parsed."""
    return ConversationOptions(continue_last=args.continue_session, resume=args.resume, save=not args.no_save)


def agent_options(args: argparse.Namespace) -> AgentOptions:
    """The agent options `add_agent_arguments` parsed."""
    return AgentOptions(thinking=args.think, effort=args.effort, tools=not args.no_tools,
                        allow_commands=tuple(args.allow_commands), allow_network=args.allow_network,
                        sandbox=not args.no_sandbox)
