"""[decode] MTP speculative decoding: the cost of a graphed 2-token verify step against a 1-token step.

Parity first (tiny random checkpoint with an MTP block, CUDA, float32): speculative greedy ids on the
draft decoder equal plain static greedy ids; if not, no timing is printed. Then at V4-Flash layer shapes
(bench_perf.py's config: one CSA + one HCA layer, plus V4's sliding MTP block; random weights, bf16, then
FP8 linears + FP4 experts) after a --context prefill: the median CUDA-graph replay of the plain step
(StaticDecoder) and of the verify step (DraftDecoder: 2 tokens per row through the main layers, argmax,
the MTP block on both, on the device), the head and the MTP block alone, the ratio, and the 43-layer
extrapolation (fixed parts + 43/2 x the two layers) with the tokens/s expected at acceptance 0.85 and
0.90 (tokens per verify step = 1 + acceptance).

    python benchmarks/bench_mtp_verify.py --out $OUT/mtp_verify    # writes mtp_verify.json and .md there
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_perf import cuda_ms, flash_hf_config, module_bytes  # noqa: E402
from v4 import model  # noqa: E402
from v4.model.config import EngineConfig, V4Config  # noqa: E402
from v4.model.quantized_linear import quantize_model  # noqa: E402
from v4.model.random_checkpoint import init_checkpoint  # noqa: E402
from v4.model.static_decode import StaticDecoder  # noqa: E402
from v4.model.sampling import Sampling  # noqa: E402
from v4.model.static_verify import DraftDecoder  # noqa: E402
from v4.model.v4 import Transformer  # noqa: E402

ACCEPTANCE = (0.85, 0.90)  # DeepSeek's and KTransformers' reports for V4's first MTP draft token


def parity(work: Path) -> dict:
    engine = model.load(init_checkpoint(work / "tiny", "tiny", seed=4), device="cuda", dtype="float32")
    prompt = torch.randint(0, 32000, (45,), generator=torch.Generator().manual_seed(3)).tolist()
    plain = list(engine.generate(prompt, 48, state=engine.new_state(256, draft=False), static=True))
    spec = list(engine.generate(prompt, 48, state=engine.new_state(256), speculative=True, static=True))
    return {"ids_equal": plain == spec, "tokens": len(plain), "drafted": engine.draft_stats.drafted}


def flash_model() -> model.Engine:
    """V4-Flash shapes, 2 layers + MTP block, random weights on the GPU (no checkpoint written)."""
    data = flash_hf_config(2).to_dict()
    data["num_nextn_predict_layers"] = 1
    config = V4Config.from_dict(data)
    torch.set_default_dtype(torch.bfloat16)  # linears in bf16 from the start (float32 would not fit); the
    with torch.device("meta"):               # parameters V4 keeps in float32 are made so explicitly
        net = Transformer(config)
    torch.set_default_dtype(torch.float32)
    net = net.to_empty(device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
            if tensor.is_floating_point():
                scale = 0.5 if tensor.dim() <= 1 else tensor.shape[-1] ** -0.5
                tensor.normal_(generator=generator).mul_(scale).add_(1.0 if name.endswith("norm.weight") else 0.0)
    net.materialize_buffers("cuda")
    return model.Engine(net.eval(), EngineConfig(device="cuda"))


def graphed(fn):
    """`fn` captured in a CUDA graph (after two warm-up runs): its replay, for cuda_ms."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(), fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def layer_bytes(net: torch.nn.Module, tokens: int) -> float:
    """Weight bytes a main layer moves for a step of `tokens` tokens: every weight of the block once,
    and of the routed experts the expected distinct ones of `tokens` x top-k uniform picks (random
    weights route near-uniformly; as bench_perf.step_bytes). The state a query reads at 4K tokens is
    under 1% of it and left out."""
    config = net.config
    total = 0.0
    for block in net.layers:
        routed = module_bytes(block.ffn.experts)
        experts, top = config.n_routed_experts, config.num_experts_per_tok
        distinct = experts * (1 - (1 - top / experts) ** tokens)
        total += module_bytes(block) - routed + distinct * routed / experts
    return total / len(net.layers)


def timings(engine: model.Engine, context: int, batch: int, repeats: int) -> dict:
    net, capacity = engine.model, context + 256
    prompt = torch.randint(0, net.config.vocab_size, (context,), generator=torch.Generator().manual_seed(1)).tolist()
    state = engine.new_state(capacity)
    first = int(engine.prefill(prompt, state).argmax())
    plain = StaticDecoder(net, batch, capacity)
    spec = DraftDecoder(net, batch, capacity)
    pairs = []
    for row in range(batch):  # each row its own tokens, so rows route to different experts
        plain.load_row(row, state)
        token = (first + 7919 * row) % net.config.vocab_size
        pairs.append((token, spec.start(row, state, token)))
    plain.token_ids.copy_(torch.tensor([p[0] for p in pairs]))
    plain.positions.fill_(context)
    plain.capture()
    spec.verify(pairs)  # captures (warm-up on inactive rows), replays once
    spec.positions.fill_(context)
    spec.pairs.copy_(torch.tensor(pairs))
    out = {"plain_ms": cuda_ms(plain.replay, repeats), "verify_ms": cuda_ms(spec.replay_verify, repeats)}
    # the same verify step sampling by the rejection rule (temperature 0.7): its own graph
    sampled = DraftDecoder(net, batch, capacity)
    sampled.set_sampling(Sampling(0.7))
    drawn = []
    for row in range(batch):
        drawn.append((pairs[row][0], sampled.start(row, state, pairs[row][0])))
    sampled.verify(drawn)
    sampled.positions.fill_(context)
    out["verify_sampling_ms"] = cuda_ms(sampled.replay_verify, repeats)
    del sampled
    device, dtype = net.embed.weight.device, net.embed.weight.dtype
    streams = torch.randn(batch, 2, net.config.hc_mult, net.config.hidden_size, device=device, dtype=dtype)
    one = streams[:, :1].contiguous()  # the head and the MTP block alone, graphed as in the steps
    out["head_ms_1"] = cuda_ms(graphed(lambda: net.logits(one)), repeats)
    out["head_ms_2"] = cuda_ms(graphed(lambda: net.logits(streams)), repeats)
    steps = spec._verify_positions  # the verify step's indices: its MTP writes land where the step's do
    mtp_ids = torch.randint(0, net.config.vocab_size, (batch, 2), device=device)
    out["mtp_ms_2"] = cuda_ms(graphed(lambda: spec._draft(streams, mtp_ids, steps)), repeats)
    out["ratio_2_layers"] = out["verify_ms"] / out["plain_ms"]
    layer_plain = (out["plain_ms"] - out["head_ms_1"]) / 2
    layer_verify = (out["verify_ms"] - out["head_ms_2"] - out["mtp_ms_2"]) / 2
    plain43 = out["head_ms_1"] + 43 * layer_plain
    verify43 = out["head_ms_2"] + out["mtp_ms_2"] + 43 * layer_verify
    # a 2-token row touches about twice the routed experts: the ratio its bytes allow, measured beside
    out["layer_bytes_ratio"] = layer_bytes(net, 2 * batch) / layer_bytes(net, batch)
    out.update(layer_plain_ms=layer_plain, layer_verify_ms=layer_verify, layer_ratio=layer_verify / layer_plain,
               plain_43_ms=plain43, verify_43_ms=verify43, ratio_43=verify43 / plain43,
               plain_43_tok_s=batch * 1e3 / plain43)
    for a in ACCEPTANCE:
        out[f"spec_43_tok_s_at_{a:.2f}"] = batch * (1 + a) * 1e3 / verify43
    return out


def markdown(results: dict) -> str:
    lines = ["| weights | B | plain ms | verify ms | ratio (2 layers) | layer ratio | layer bytes ratio | 43-layer ratio "
             "| plain tok/s | spec tok/s @0.85 | @0.90 |", "|" + "---|" * 11]
    for key, r in results["timings"].items():
        weights, batch = key.rsplit("_b", 1)
        lines.append(f"| {weights} | {batch} | {r['plain_ms']:.3f} | {r['verify_ms']:.3f} | {r['ratio_2_layers']:.3f} "
                     f"| {r['layer_ratio']:.3f} | {r['layer_bytes_ratio']:.3f} | {r['ratio_43']:.3f} | {r['plain_43_tok_s']:.1f} "
                     f"| {r['spec_43_tok_s_at_0.85']:.1f} | {r['spec_43_tok_s_at_0.90']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for mtp_verify.json and mtp_verify.md")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
               "context": args.context, "timings": {}}
    with tempfile.TemporaryDirectory() as work:
        results["parity"] = parity(Path(work))
    print("parity", results["parity"])
    if not results["parity"]["ids_equal"]:
        (args.out / "mtp_verify.json").write_text(json.dumps(results, indent=2))
        sys.exit("speculative greedy ids differ from plain greedy ids: no timings")
    engine = flash_model()
    for weights in ("bf16", "fp8_fp4"):
        if weights == "fp8_fp4":
            quantize_model(engine.model, linears="fp8", experts="fp4")
            torch.cuda.empty_cache()
        for batch in args.batches:
            results["timings"][f"{weights}_b{batch}"] = timings(engine, args.context, batch, args.repeats)
            (args.out / "mtp_verify.json").write_text(json.dumps(results, indent=2))  # kept if a later one fails
    (args.out / "mtp_verify.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
