"""Engine check and baseline on the GPU, in one call: the reference path's parity with transformers on
CUDA, chunked prefill, FP8/FP4 checkpoints, Engram tables in host memory, and the reference path's
prefill/decode speed (the baseline the [kernels] and [perf] issues improve on).

Correctness first: if parity fails, no timing is printed. Timings use CUDA events after warm-up,
medians of `--repeats` runs.

    python benchmarks/bench_engine.py [--device cuda] [--out benchmarks/results/engine.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "model"))

from v4 import model  # noqa: E402
from v4.model.random_checkpoint import init_checkpoint  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def tiny_reference(work: Path) -> tuple[Path, object]:
    """transformers' DeepseekV4ForCausalLM at the test suite's tiny config and initialisation, saved
    under `work`: (checkpoint directory, the model on CPU)."""
    import transformers
    from conftest import TINY, randomize  # the test suite's config and initialisation

    config = transformers.DeepseekV4Config(**TINY)
    torch.manual_seed(0)
    reference = transformers.DeepseekV4ForCausalLM(config).eval()
    randomize(reference, seed=1)
    path = work / "hf_tiny"
    reference.save_pretrained(path)
    return path, reference


def parity(device: str, work: Path) -> dict:
    """Our engine against transformers' DeepseekV4ForCausalLM on the test suite's tiny config, on `device`."""
    import transformers
    from conftest import TINY

    path, reference = tiny_reference(work)
    reference = reference.to(device)
    ids = torch.randint(0, TINY["vocab_size"], (1, 130), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(ids.to(device), use_cache=False).logits[0].float()
    result = {"transformers": transformers.__version__}
    with torch.no_grad():  # how far bfloat16 alone moves the reference (discrete top-k choices flip)
        reference_bf16 = reference.to(torch.bfloat16)(ids.to(device), use_cache=False).logits[0].float()
    result["transformers_bf16_vs_fp32"] = relative(reference_bf16, expected)
    for dtype in ("float32", "bfloat16"):
        engine = model.load(path, device=device, dtype=dtype)
        whole = engine.forward(ids[0].tolist(), engine.new_state())
        state, parts, at = engine.new_state(), [], 0
        for size in (37, 1, 1, 90, 1):
            parts.append(engine.forward(ids[0, at : at + size].tolist(), state))
            at += size
        result[dtype] = {"full_vs_transformers_fp32": relative(whole, expected),
                         "chunked_vs_full": relative(torch.cat(parts), whole)}
    return result


def quantized(device: str, work: Path) -> dict:
    """An FP8/FP4 checkpoint against its dequantised copy, loaded on `device`."""
    import inspect

    if "fp8" not in inspect.signature(init_checkpoint).parameters:
        return {"skipped": "init_checkpoint has no fp8 option"}
    from safetensors.torch import save_file

    from v4.model.weights import read_tensors

    path = init_checkpoint(work / "fp8", "tiny", seed=2, fp8=True)
    plain = work / "fp8_dequantised"
    plain.mkdir()
    (plain / "config.json").write_text((path / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in read_tensors(path)}, str(plain / "model.safetensors"))
    ids = torch.randint(0, 32000, (80,), generator=torch.Generator().manual_seed(4)).tolist()
    started = time.perf_counter()
    quant = model.load(path, device=device, dtype="float32", quantized=False)  # dequantised while loading
    load_s = time.perf_counter() - started
    ref = model.load(plain, device=device, dtype="float32")
    ref_logits = ref.forward(ids, ref.new_state())
    report = {"vs_dequantised": relative(quant.forward(ids, quant.new_state()), ref_logits), "load_s": round(load_s, 3)}
    if device.startswith("cuda"):  # native FP8 GEMMs quantise activations too: information, not a check
        native = model.load(path, device=device, dtype="float32")
        report["native_fp8_vs_dequantised"] = relative(native.forward(ids, native.new_state()), ref_logits)
    return report


def engram_host_tables(device: str, work: Path) -> dict:
    """Engram tables in host memory while the rest runs on `device`: the same logits as all on `device`."""
    from test_engram_in_model import BASE, ENGRAM, write_random_checkpoint

    path = write_random_checkpoint(work / "engram", {**BASE, **ENGRAM}, seed=2)
    ids = torch.randint(0, 300, (64,), generator=torch.Generator().manual_seed(5)).tolist()
    on_device = model.load(path, device=device, dtype="bfloat16")
    hosted = model.load(path, device=device, dtype="bfloat16", engram_table_device="cpu")
    table = hosted.model.layers[1].engram.embed.weight
    return {"table_device": str(table.device), "rest_device": str(hosted.device),
            "vs_all_on_device": relative(hosted.forward(ids, hosted.new_state()),
                                         on_device.forward(ids, on_device.new_state()))}


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def speed(device: str, work: Path, repeats: int, lengths: list[int], steps: int) -> dict:
    """Reference-path prefill and decode speed of the `small` preset (eager PyTorch; bfloat16 on
    CUDA, float32 on CPU, where bfloat16 matmuls are emulated)."""
    path = init_checkpoint(work / "small", "small", seed=0)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    engine = model.load(path, device=device, dtype=dtype)
    longest = max(lengths)
    ids = torch.randint(0, 32000, (longest + steps,), generator=torch.Generator().manual_seed(6)).tolist()
    result: dict[str, object] = {"preset": "small", "dtype": dtype}
    for length in lengths:
        seconds = timed(lambda: engine.forward(ids[:length], engine.new_state(2 * longest)), repeats, device)
        result[f"prefill_{length}_tok_s"] = round(length / seconds, 1)
    state = engine.new_state(2 * longest)
    engine.forward(ids[:longest], state)

    def decode() -> None:
        for token in ids[:steps]:
            engine.forward([token], state)

    seconds = timed(decode, 1, device)
    result[f"decode_after_{longest}_tok_s"] = round(steps / seconds, 1)
    result["decode_ms_per_token"] = round(1000 * seconds / steps, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-speed", action="store_true", help="checks only")
    parser.add_argument("--prefill", default="512,4096", help="prefill lengths to time, comma-separated")
    parser.add_argument("--decode-steps", type=int, default=64)
    args = parser.parse_args()
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report["parity"] = parity(args.device, work)
        report["quantized"] = quantized(args.device, work)
        report["engram_host_tables"] = engram_host_tables(args.device, work)
        checks = [report["parity"]["float32"]["full_vs_transformers_fp32"] < 1e-4,
                  report["parity"]["float32"]["chunked_vs_full"] < 1e-4,
                  report["engram_host_tables"]["vs_all_on_device"] == 0.0]
        if "vs_dequantised" in report["quantized"]:
            checks.append(report["quantized"]["vs_dequantised"] < 1e-4)
        report["checks_pass"] = all(checks)
        if report["checks_pass"] and not args.no_speed:
            lengths = [int(n) for n in args.prefill.split(",")]
            report["speed_reference_path"] = speed(args.device, work, args.repeats, lengths, args.decode_steps)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if not report["checks_pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
