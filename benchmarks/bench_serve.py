"""`v4 serve` with continuous batching: N concurrent chat requests against the same N sent one after
another, over real HTTP, on a random checkpoint (the `small` preset unless --model is given).

Reported: wall seconds, completion tokens/s over all requests and the ratio, measured side by side in
one run; the answers must be equal both ways (each request samples with its own generator).

    python benchmarks/bench_serve.py --out benchmarks/results/serve_cpu.json
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def start_server(checkpoint: Path, device: str, max_batch: int) -> tuple[str, object]:
    import uvicorn

    from v4 import model
    from v4.agent.backends import EmbeddedBackend
    from v4.agent.chat_format import chat_format_for
    from v4.cli.openai_server import ServeConfig, create_app

    engine = model.load(checkpoint, device=device)
    backend = EmbeddedBackend(engine, chat_format_for(checkpoint), 8192)
    app = create_app(backend, ServeConfig(("bench",), max_batch=max_batch))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", app


def ask(url: str, index: int, max_tokens: int) -> tuple[str, int]:
    body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0.7, "seed": index,
            "messages": [{"role": "user", "content": f"Question {index}: what does module {index} do?"}]}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.loads(response.read())
    return reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    from v4.model.random_checkpoint import init_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.model or init_checkpoint(Path(tmp) / "small", "small", seed=0,
                                                   tokenizer_json=REPO / "repo_index" / "data" / "tokenizer.json")
        url, app = start_server(checkpoint, args.device, args.requests)
        ask(url, 999, 4)  # warm-up
        started = time.perf_counter()
        alone = [ask(url, i, args.max_tokens) for i in range(args.requests)]
        sequential_s = time.perf_counter() - started
        together: list = [None] * args.requests
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(url, i, args.max_tokens)))
                   for i in range(args.requests)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        concurrent_s = time.perf_counter() - started
    tokens = sum(n for _, n in alone)
    result = {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
              "checkpoint": "small preset, random weights" if args.model is None else str(args.model),
              "requests": args.requests, "max_tokens": args.max_tokens, "completion_tokens": tokens,
              "sequential_s": sequential_s, "concurrent_s": concurrent_s,
              "sequential_tokens_per_s": tokens / sequential_s, "concurrent_tokens_per_s": tokens / concurrent_s,
              "speedup": sequential_s / concurrent_s, "widest_step_rows": app.state.batcher.widest,
              "answers_equal": together == alone, "torch_threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
