"""[perf] on one GPU, in one call: checks first, then V4-Flash-shaped layers timed.

Checks (tiny random checkpoint, CUDA): the static CUDA-graphed decoder against the eager path (logits
per step, B=3 rows at different positions), greedy ids of both generate paths, batched generation
against one prompt at a time, and native FP8/FP4 weights against their dequantised copy.

Timings (V4-Flash layer shapes: hidden 4096, 64 heads x 512, 256 experts x 2048, top 6, index 64 x 128
top 512; one CSA and one HCA layer, random weights): transformers' eager DeepseekV4ForCausalLM on the
same weights (bf16), ours eager / static-graphed at batch 1 and 8 in bf16 and with FP8 linears + FP4
experts, achieved GB/s against the bytes a step must move and the measured copy ceiling, prefill
tokens/s from 8K to 1M tokens, state bytes per token, peak memory. Per-layer numbers are
extrapolated to V4-Flash's 43 layers as fixed cost + 43/2 x (one CSA + one HCA layer), where the graphed
step's cost per layer is measured as a margin: the same step on the model with its layers repeated
(CSA, HCA, CSA, HCA: the same weights, re-read from HBM, their own state) less the 2-layer step, over 2.
What is left of the 2-layer step is the fixed cost (embedding, head, the per-step position work).

Results are written after every section (a timeout keeps what finished):
    python benchmarks/bench_perf.py --out $OUT/perf.json
    python benchmarks/bench_perf.py --out $OUT/perf_fp8kv.json --kv-format fp8 --prefill-only --skip-checks
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "model"))

from v4 import model  # noqa: E402
from bench_engine import relative, tiny_reference  # noqa: E402
from v4.model.config import CSA, HCA  # noqa: E402
from v4.model.quantized_linear import quantize_model  # noqa: E402
from v4.model.random_checkpoint import init_checkpoint  # noqa: E402
from v4.model.static_decode import StaticDecoder  # noqa: E402

GIB = 1024**3


def cuda_ms(fn, repeats: int) -> float:
    """Median milliseconds of `fn` over `repeats` runs, CUDA events, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def timed_prefill(engine, tokens: torch.Tensor, state, chunk: int) -> float:
    """Seconds to feed `tokens` into `state` in chunks of `chunk` (device work included), as
    Engine.prefill does: the head only on each chunk's last position."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(tokens), chunk):
        engine.forward(tokens[start : start + chunk], state, last_only=True)
    torch.cuda.synchronize()
    return time.perf_counter() - started


class Results:
    def __init__(self, path: Path | None) -> None:
        self.path, self.data = path, {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def put(self, key: str, value: object) -> None:
        self.data[key] = value
        print(json.dumps({key: value}, indent=1), flush=True)
        if self.path:
            self.path.write_text(json.dumps(self.data, indent=1))


# ----------------------------------------------------------------------------- checks


def checks(work: Path) -> dict:
    path, _ = tiny_reference(work)
    ids = lambda n, seed: torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()  # noqa: E731
    out: dict = {}
    for dtype in ("float32", "bfloat16"):
        engine = model.load(path, device="cuda", dtype=dtype)
        prompts = [ids(5, 1), ids(13, 2), ids(30, 3)]
        decoder = StaticDecoder(engine.model, batch=3, capacity=64, use_graph=True)
        eager = []
        for row, prompt in enumerate(prompts):
            state = engine.new_state(256, draft=False)
            engine.forward(prompt, state)
            decoder.load_row(row, state)
            state = engine.new_state(256, draft=False)
            engine.forward(prompt, state)
            eager.append(state)
        worst = 0.0
        for step in range(40):
            tokens = [ids(40, 10 + row)[step] for row in range(3)]
            logits = decoder.step(tokens)
            for row in range(3):
                worst = max(worst, relative(logits[row], engine.forward([tokens[row]], eager[row])[-1]))
        prompt = ids(21, 4)
        greedy_eager = list(engine.generate(prompt, 30, static=False))
        greedy_static = list(engine.generate(prompt, 30, static=True))
        batch = engine.generate_batch(prompts, 20)
        single = [list(engine.generate(p, 20, static=False)) for p in prompts]
        out[dtype] = {"graph_vs_eager_logits_max_rel": worst, "greedy_ids_equal": greedy_eager == greedy_static,
                      "batch_equals_single": batch == single}
    quant_dir = work / "tiny_fp8"
    init_checkpoint(quant_dir, "tiny", seed=3, fp8=True)
    prompt = ids(100, 5)
    for dtype in ("float32", "bfloat16"):
        native = model.load(quant_dir, device="cuda", dtype=dtype, quantized=True)
        dense = model.load(quant_dir, device="cuda", dtype=dtype, quantized=False)
        a = native.forward(prompt, native.new_state(256))
        b = dense.forward(prompt, dense.new_state(256))
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        os.environ["V4_KERNELS"] = "0"  # the same quantised weights through the PyTorch references
        try:
            r = native.forward(prompt, native.new_state(256))
        finally:
            os.environ.pop("V4_KERNELS")
        out[f"native_fp8_fp4_{dtype}"] = {
            "kernels_vs_reference_max_rel": relative(a, r),
            "vs_dequantised_max_rel": relative(a, b), "argmax_agreement_vs_dequantised": agree,
            "note": "the FP8 GEMMs quantise activations (1x128, ue8m0) as V4 does; the dequantised copy does not"}
    return out


# ----------------------------------------------------------------------------- V4-Flash shapes


def flash_hf_config(layers: int):
    import transformers

    types = [CSA, HCA] * (layers // 2)
    return transformers.DeepseekV4Config(num_hidden_layers=layers, layer_types=types, num_hash_layers=0,
                                         num_nextn_predict_layers=0, max_position_embeddings=1 << 20)


def copy_ceiling() -> float:
    """GB/s of a 2 GiB device-to-device copy, counting bytes read + written."""
    src = torch.empty(2 * GIB, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), 10)
    del src, dst
    return 2 * 2 * GIB / (ms / 1e3) / 1e9


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def deepened(net: torch.nn.Module, times: int) -> torch.nn.Module:
    """`net` with its layers repeated `times` (shared weights, which a step reads from HBM again: two
    layers' weights are far over L2): the graphed step's cost per added layer, apart from its fixed cost."""
    deep = copy.copy(net)
    deep._modules = dict(net._modules)
    deep._modules["layers"] = torch.nn.ModuleList(list(net.layers) * times)
    config = net.config
    deep.config = dataclasses.replace(config, num_hidden_layers=config.num_hidden_layers * times,
                                      layer_types=config.layer_types * times,
                                      mlp_layer_types=config.mlp_layer_types * times)
    return deep


def graphed_step_ms(net: torch.nn.Module, state, batch: int, capacity: int, kv_format: str, tokens: torch.Tensor,
                    context: int, repeats: int) -> float:
    """The CUDA-graphed step of `batch` rows loaded from `state` (its layers repeated to fill a deepened
    model's), one token each at `context`."""
    decoder = StaticDecoder(net, batch=batch, capacity=capacity, kv_format=kv_format)
    rows = dataclasses.replace(state, layers=state.layers * (len(net.layers) // len(state.layers)))
    for row in range(batch):
        decoder.load_row(row, rows)
    decoder.token_ids.copy_(tokens)
    decoder.positions.fill_(context)
    decoder.capture()
    ms = cuda_ms(decoder.replay, repeats)
    del decoder
    gc.collect()
    torch.cuda.empty_cache()
    return ms


def step_bytes(net: torch.nn.Module, batch: int, context: int) -> dict:
    """Bytes one decode step must move: every weight but the routed experts and the embedding, the
    routed experts a batch touches (expected distinct experts of batch x top-6 uniform picks), the
    state a query reads."""
    config = net.config
    fixed = module_bytes(net) - module_bytes(net.embed)
    routed = 0
    per_expert = 0
    for block in net.layers:
        experts = block.ffn.experts
        layer_routed = module_bytes(experts)
        fixed -= layer_routed
        per_expert = layer_routed / config.n_routed_experts
        distinct = config.n_routed_experts * (1 - (1 - config.num_experts_per_tok / config.n_routed_experts) ** batch)
        routed += distinct * per_expert
    state = 0
    elem = 2
    for kind in config.layer_types:
        state += config.sliding_window * config.head_dim * elem
        entries = context // config.compress_rates[kind]
        if kind == CSA:
            state += min(config.index_topk, entries) * config.head_dim * elem + entries * config.index_head_dim * elem
        else:
            state += entries * config.head_dim * elem
    total = fixed + routed + batch * state
    return {"weights_fixed": fixed, "experts": routed, "state": batch * state, "total": total,
            "per_expert": per_expert}


def transformers_decode(hf, prompt: list[int], section: dict) -> torch.Tensor | None:
    """transformers' logits on the first 256 tokens, and its eager decode step after `prompt` timed into
    `section`; an error is recorded there instead (the run goes on)."""
    try:
        with torch.no_grad():
            out = hf(torch.tensor([prompt[:256]], device="cuda"), use_cache=False)
            logits = out.logits[0].float()
            cache = hf(torch.tensor([prompt], device="cuda"), use_cache=True).past_key_values
            token = torch.tensor([[prompt[-1]]], device="cuda")

            def hf_step():
                nonlocal cache
                cache = hf(token, past_key_values=cache, use_cache=True).past_key_values

            section["transformers_decode_ms_b1"] = cuda_ms(hf_step, 5)
        return logits
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        section["transformers_error"] = repr(exc)[:500]
        return None


def flash(work: Path, results: Results, context: int, repeats: int, prefill_lengths: list[int],
          chunk: int, deadline: float, kv_format: str = "float", prefill_only: bool = False) -> None:
    import transformers

    layers = 2
    hf_config = flash_hf_config(layers)
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = transformers.DeepseekV4ForCausalLM(hf_config).to(torch.bfloat16).eval()
    path = work / "flash2"
    t0 = time.perf_counter()
    hf.save_pretrained(path)
    results.put("flash_setup", {"layers": layers, "save_s": time.perf_counter() - t0})
    ids = torch.randint(0, hf_config.vocab_size, (context + 64,), generator=torch.Generator().manual_seed(1))
    prompt = ids[:context].tolist()

    # transformers eager: prefill then decode with its cache
    section: dict = {}
    hf_logits_256 = None
    if prefill_only:
        section["transformers"] = "skipped (--prefill-only)"
    else:
        hf_logits_256 = transformers_decode(hf, prompt, section)
    del hf
    gc.collect()
    torch.cuda.empty_cache()

    engine = model.load(path, device="cuda", dtype="bfloat16", quantized=False, kv_format=kv_format)
    net = engine.model
    if hf_logits_256 is not None:
        ours = engine.forward(prompt[:256], engine.new_state(512, draft=False))
        section["bf16_logits_vs_transformers_max_rel"] = relative(ours, hf_logits_256)
    section["copy_ceiling_gbs"] = copy_ceiling()
    results.put("flash_transformers", section)

    if prefill_only:
        quantize_model(net, linears="fp8", experts="fp4")
        gc.collect()
        torch.cuda.empty_cache()
    for variant in () if prefill_only else ("bf16", "fp8_fp4"):
        if variant == "fp8_fp4":
            bf16_logits = engine.forward(prompt[:256], engine.new_state(512, draft=False))
            quantize_model(net, linears="fp8", experts="fp4")
            gc.collect()
            torch.cuda.empty_cache()
            q_logits = engine.forward(prompt[:256], engine.new_state(512, draft=False))
        timings: dict = {"weights_gib": module_bytes(net) / GIB}
        if variant == "fp8_fp4":
            timings["logits_vs_bf16_max_rel"] = relative(q_logits, bf16_logits)
            timings["argmax_agreement_vs_bf16"] = (q_logits.argmax(-1) == bf16_logits.argmax(-1)).float().mean().item()
        state = engine.new_state(context + 256, draft=False)
        engine.forward(prompt, state)
        from v4.model.state import mark, rewind

        saved = mark(state)

        def eager_step():
            rewind(state, saved)
            engine.forward([prompt[-1]], state)

        timings["eager_ms_b1"] = cuda_ms(eager_step, repeats)
        streams = net.embed_streams(torch.tensor([[1]], device="cuda"))
        timings["head_ms"] = cuda_ms(lambda: net.logits(streams), repeats)
        hidden = torch.randn(1, net.config.hidden_size, device="cuda", dtype=torch.bfloat16)
        timings["head_matmul_only_ms"] = cuda_ms(lambda: net.head(hidden), repeats)
        deep = deepened(net, 2)
        for batch in (1, 8):
            # each row its own token: rows with one token would route to the same 6 experts, and the
            # step would move a sixth of the expert bytes that step_bytes counts for B rows
            tokens = torch.tensor([prompt[-1 - row] for row in range(batch)], dtype=torch.long, device="cuda")
            timed = lambda model: graphed_step_ms(model, state, batch, context + 256, engine.config.kv_format,  # noqa: E731
                                                  tokens, context, repeats * 4)
            ms, deep_ms = timed(net), timed(deep)
            ms = min(ms, timed(net))  # the 2-layer step again, after the 4-layer one: drift shows as a margin
            moved = step_bytes(net, batch, context)
            per_layer = (deep_ms - ms) / layers
            fixed = ms - layers * per_layer
            layer_bytes = (moved["total"] - module_bytes(net.head)) / layers
            timings[f"graph_ms_b{batch}"] = ms
            timings[f"graph_ms_b{batch}_{2 * layers}_layers"] = deep_ms
            timings[f"graph_gbs_b{batch}"] = moved["total"] / (ms / 1e3) / 1e9
            timings[f"bytes_b{batch}"] = moved
            timings[f"per_layer_ms_b{batch}"] = per_layer
            timings[f"per_layer_gbs_b{batch}"] = layer_bytes / (per_layer / 1e3) / 1e9
            timings[f"fixed_ms_b{batch}"] = fixed
            timings[f"graph_ms_b{batch}_43_layers"] = fixed + 43 * per_layer
            timings[f"tokens_per_s_b{batch}_43_layers"] = batch * 1e3 / timings[f"graph_ms_b{batch}_43_layers"]
            # the earlier method (head timed alone as the only fixed cost), kept for comparison
            timings[f"graph_ms_b{batch}_43_layers_head_only_fixed"] = (timings["head_ms"] + 43 / layers
                                                                       * (ms - timings["head_ms"]))
        timings["eager_ms_b1_43_layers"] = timings["head_ms"] + 43 / layers * (timings["eager_ms_b1"] - timings["head_ms"])
        if "transformers_decode_ms_b1" in section:
            timings["speedup_graph_vs_transformers_b1"] = section["transformers_decode_ms_b1"] / timings["graph_ms_b1"]
        timings["ceiling_fraction_b1"] = timings["graph_gbs_b1"] / section["copy_ceiling_gbs"]
        results.put(f"flash_decode_{variant}", timings)
        del state, saved
        gc.collect()
        torch.cuda.empty_cache()

    # prefill scaling on the quantised model
    scaling: dict = {"chunk": chunk, "layers": layers,
                     "order": "longest first (it pays every kernel's autotuning), then shortest up"}
    vocab = hf_config.vocab_size
    longest = max(prefill_lengths)
    for length in [longest] + sorted(prefill_lengths):
        if time.perf_counter() > deadline:
            scaling[f"skipped_{length}"] = "time budget"
            break
        key = str(length) if length != longest or "warm_up" in scaling else "warm_up"
        torch.cuda.reset_peak_memory_stats()
        state = engine.new_state(length, draft=False)
        tokens = torch.randint(0, vocab, (length,), device="cuda")
        seconds = timed_prefill(engine, tokens, state, chunk)
        state_bytes = sum(t.numel() * t.element_size() for layer in state.layers
                          for t in _state_tensors(layer))
        scaling[key] = {"length": length, "seconds": seconds, "tokens_per_s": length / seconds,
                                "peak_gib": torch.cuda.max_memory_allocated() / GIB,
                                "state_bytes_per_token": state_bytes / length}
        results.put("flash_prefill", scaling)
        del state, tokens
        gc.collect()
        torch.cuda.empty_cache()
    lengths = [n for n in prefill_lengths if str(n) in scaling]
    scaling["growth_per_doubling"] = {
        f"{a}->{b}": (scaling[str(b)]["seconds"] / scaling[str(a)]["seconds"]) ** (1 / math.log2(b / a))
        for a, b in zip(lengths, lengths[1:])}
    from v4.model.checkpoint import state_bytes_per_token

    scaling["analytic_state_bytes_per_token_bf16"] = state_bytes_per_token(net.config, fp8=False)
    scaling["analytic_state_bytes_per_token_fp8_layout"] = state_bytes_per_token(net.config, fp8=True)
    results.put("flash_prefill", scaling)


def _state_tensors(layer) -> list[torch.Tensor]:
    """Every tensor a layer's state holds (state.py): entries and ring, partial windows, indexer keys."""
    tensors = [layer.kv] + [t for t in (layer.index_keys, layer.index_scales) if t is not None]
    for comp in (layer.compressor, layer.indexer):
        if comp is not None:
            tensors += [comp.partial_kv, comp.partial_gate]
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--context", type=int, default=4096, help="tokens before the timed decode steps")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--prefill", default="8192,32768,131072,524288,1048576")
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--budget-s", type=float, default=540, help="stop starting prefill lengths after this")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--prefill-only", action="store_true", help="skip transformers and the decode timings")
    parser.add_argument("--kv-format", default="float", choices=("float", "fp8"),
                        help="the decode state's format: the model dtype, or DeepSeek's FP8 layout")
    args = parser.parse_args()
    started = time.perf_counter()
    results = Results(args.out)
    results.put("kv_format", args.kv_format)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_checks:
            results.put("checks", checks(work))
        with torch.no_grad():
            flash(work, results, args.context, args.repeats, [int(n) for n in args.prefill.split(",")],
                  args.chunk, started + args.budget_s, args.kv_format, args.prefill_only)
    results.put("wall_s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
