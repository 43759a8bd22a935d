"""What moving a decode state into and out of the static decoder costs around one answer, at long
contexts: the time of `load_row` + `store_row` and the GPU memory the decoder holds beside the state.

Runs on any tree (the one before the shared layout has no `Engine.state_decoder`), so
`benchmarks/device_decode.sh checks` runs it on `benchmarks/.work/base` and on this tree in one call.
V4-Flash attention shapes (one CSA and one HCA layer: the state's bytes do not depend on the experts,
so the model keeps 8 small ones), FP8 decode state, the state's content left as allocated (a copy
costs the same whatever the bytes are).

    python benchmarks/bench_state_handoff.py --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_perf import flash_hf_config  # noqa: E402
from v4 import model  # noqa: E402
from v4.model.config import EngineConfig, V4Config  # noqa: E402
from v4.model.v4 import Transformer  # noqa: E402

GIB = 1 << 30


def small_flash_engine(device: str) -> model.Engine:
    """V4-Flash attention (2 layers: CSA, HCA) with 8 tiny routed experts, random bf16 weights."""
    data = flash_hf_config(2).to_dict()
    data.update(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=256)
    config = V4Config.from_dict(data)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        net = Transformer(config)
    torch.set_default_dtype(torch.float32)
    net = net.to_empty(device=device)
    with torch.no_grad():
        for tensor in list(net.parameters()) + list(net.buffers()):
            if tensor.is_floating_point():
                tensor.normal_().mul_(0.02)
    net.materialize_buffers(device)
    return model.Engine(net.eval(), EngineConfig(device=device, kv_format="fp8"))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free() -> None:
    """Collect what the last measurement left (a state and its decoder hold each other) and return it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def allocated() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def timed(fn, repeats: int = 5) -> float:
    """Median milliseconds of `fn` (synchronised)."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def handoff(engine: model.Engine, tokens: int, shared: bool) -> dict:
    """One answer's handoff at `tokens` held: the decoder made (memory it adds), then load + store."""
    state = engine.new_state(tokens + 64, draft=False)
    state.num_tokens = tokens
    sync()
    before = allocated()
    if shared:
        decoder = engine.state_decoder(state, tokens + 64)
    else:
        decoder = engine.static_decoder(1, tokens + 64)
    sync()
    added = allocated() - before

    def around_an_answer() -> None:
        decoder.load_row(0, state)
        decoder.store_row(0, state)

    state_bytes = sum(t.numel() * t.element_size() for layer in state.layers
                      for t in vars_of(layer) if t is not None)
    result = {"tokens": tokens, "handoff_ms": timed(around_an_answer), "decoder_bytes": added,
              "state_bytes": state_bytes}
    engine._decoders.clear()  # noqa: SLF001 - free the copy before the next length
    getattr(state, "decoders", {}).clear()  # the old tree's states keep no decoder
    return result


def vars_of(layer: object) -> list:
    """A layer state's tensors, in either layout (the old one keeps a `window` and entries per compressor;
    entries viewed out of `kv` are counted once, with it)."""
    found = []
    for name in ("kv", "window", "index_keys", "index_scales"):
        found.append(getattr(layer, name, None))
    for comp in (getattr(layer, "compressor", None), getattr(layer, "indexer", None)):
        if comp is not None:
            found += [getattr(comp, name, None) for name in ("partial_kv", "partial_gate", "overlap_kv",
                                                              "overlap_gate")]
            if not hasattr(layer, "index_keys"):  # the old layout: entries belong to the compressor
                found += [comp.entries, comp.entry_scale]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lengths", default="65536,262144,1048576")
    args = parser.parse_args()
    engine = small_flash_engine("cuda" if torch.cuda.is_available() else "cpu")  # CPU: a dry run
    shared = hasattr(engine, "state_decoder")
    runs = {"tree": "shared layout" if shared else "load_row/store_row conversion", "layers": 2,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "by_length": []}
    for tokens in (int(n) for n in args.lengths.split(",")):
        runs["by_length"].append(handoff(engine, tokens, shared))
        free()
        if shared:  # the batched decoder's path on this tree: plain copies of the same layout
            copied = handoff(engine, tokens, False)
            free()
            runs["by_length"][-1]["copy_path"] = {k: copied[k] for k in ("handoff_ms", "decoder_bytes")}
        print(json.dumps(runs["by_length"][-1]), flush=True)
    args.out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
