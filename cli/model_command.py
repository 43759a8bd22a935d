"""`v4 model init|info` and `v4 generate`: make a random checkpoint, describe one, stream a completion."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path

from .backend_args import add_engine_arguments, engine_options
from .exit_codes import EXIT_USAGE
from .progress import load_engine


def build_model(parser: argparse.ArgumentParser) -> None:
    """`v4 model init|info`."""
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="write a random checkpoint (config, safetensors, tokenizer)")
    init.add_argument("directory", type=Path, help="where to write it (must not exist yet)")
    init.add_argument("--preset", choices=["tiny", "small"], default="tiny", help="model size (default: tiny)")
    init.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    init.add_argument("--fp8", action="store_true",
                      help="store weights as DeepSeek ships V4: FP8 linears (128x128 blocks), FP4 routed experts")
    info = actions.add_parser("info", help="parameters, layer types, dtypes and decode-state size")
    info.add_argument("directory", type=Path, help="a checkpoint directory (config.json, safetensors)")


def build_generate(parser: argparse.ArgumentParser) -> None:
    """`v4 generate TEXT --model DIR`."""
    parser.add_argument("text", help="the prompt to continue (raw text, no chat template)")
    parser.add_argument("--model", type=Path, metavar="DIR", default=os.environ.get("V4_MODEL"),
                        help="checkpoint directory (default: $V4_MODEL)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 samples greedily (default 0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    parser.add_argument("--json", action="store_true",
                        help='print {"text", "new_tokens", "offload"} once done instead of streaming the text '
                             "(offload: where the weights live and the expert hit rate, null without offload)")
    add_engine_arguments(parser)


def run_model(args: argparse.Namespace) -> int:
    """`v4 model init|info`."""
    from v4.model.checkpoint import model_info
    from v4.model.random_checkpoint import init_checkpoint
    from v4.model.config import ConfigError

    if args.model_command == "init":
        tokenizer = resources.files("v4.repo_index") / "data" / "tokenizer.json"
        try:
            with resources.as_file(tokenizer) as tokenizer_path:
                path = init_checkpoint(args.directory, args.preset, args.seed, tokenizer_path, fp8=args.fp8)
        except (FileExistsError, ValueError) as exc:
            print(f"v4 model init: {exc}", file=sys.stderr)
            return 1
        weights = " (FP8 weights, FP4 routed experts)" if args.fp8 else ""
        print(f"wrote a random {args.preset} DeepSeek V4 checkpoint{weights} to {path}")
        return 0
    try:
        info = model_info(args.directory)
    except (ConfigError, OSError) as exc:
        print(f"v4 model info: {exc}", file=sys.stderr)
        return 1
    gigabyte = 1e9
    print(f"parameters         {info.num_parameters:,} ({info.num_active_parameters:,} active per token; "
          f"MTP draft blocks {info.num_mtp_parameters:,} more)")
    counts = {t: info.layer_types.count(t) for t in dict.fromkeys(info.layer_types)}
    print("layers             " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    print(f"context            {info.context_length:,} tokens")  # v4.model.config.context_length: one number
    dtypes = ", ".join(f"{d}: {n}" for d, n in sorted(info.dtypes.items()))
    print("tensor dtypes      " + (dtypes or "no weights in the directory (sizes from config.json)"))
    if info.quantization:
        print(f"quantization       {info.quantization}")
    print(f"decode state/token {info.state_bytes_per_token_bf16:,.1f} B in bf16, "
          f"{info.state_bytes_per_token_fp8:,.1f} B in DeepSeek's FP8 layout")
    print(f"at 1M tokens       {info.state_bytes_per_token_bf16 * 1e6 / gigabyte:.2f} GB bf16, "
          f"{info.state_bytes_per_token_fp8 * 1e6 / gigabyte:.2f} GB FP8 (published for V4-Flash: ~3.7 GB)")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    """`v4 generate`: tokens are printed as they come."""
    from v4.model.parallel_protocol import ParallelError

    if args.model is None:
        print("v4 generate: needs --model DIR (or $V4_MODEL)", file=sys.stderr)
        return EXIT_USAGE
    try:
        engine = load_engine(args.model, engine_options(args))
    except (ValueError, OSError, ParallelError) as exc:  # config, weights, files, --parallel, a worker
        print(f"v4 generate: {exc}", file=sys.stderr)
        return 1
    try:
        return _generate(args, engine)
    except ParallelError as exc:  # a worker died or failed mid-answer
        sys.stdout.write("\n")
        print(f"v4 generate: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()  # stops the workers of a --parallel engine


def _generate(args: argparse.Namespace, engine: object) -> int:
    """Stream the completion of `args.text` on stdout (or print it as JSON with the offload report)."""
    if engine.tokenizer is None:
        print(f"v4 generate: {args.model} has no tokenizer.json", file=sys.stderr)
        return 1
    prompt = engine.tokenizer.encode(args.text, add_special_tokens=False).ids
    if not prompt:
        print("v4 generate: the text is empty", file=sys.stderr)
        return 1
    state = engine.new_state(max_tokens=len(prompt) + args.max_new_tokens)
    generated: list[int] = []
    printed = ""
    for token in engine.generate(prompt, args.max_new_tokens, args.temperature, args.top_p, state=state,
                                 seed=args.seed):
        generated.append(token)
        if args.json:
            continue
        text = engine.tokenizer.decode(generated)  # decode the whole tail: byte-level tokens split characters
        sys.stdout.write(text[len(printed):])
        sys.stdout.flush()
        printed = text
    if args.json:
        print(json.dumps({"text": engine.tokenizer.decode(generated), "new_tokens": len(generated),
                          "offload": engine.offload_report()}, indent=1))
        return 0
    sys.stdout.write("\n")
    return 0
