"""[decode] ops per layer of the shape-static decode step (StaticDecoder._forward), as JSON.

A V4-shaped small model (head_dim 512 with 64 RoPE dims, window 128, CSA rate 4, HCA rate 128, 4 mHC
streams; narrow hidden size, few heads and experts: the op count does not depend on the widths), one CSA
layer and one HCA layer, rows at `--context` tokens. The step runs eagerly (what a graph would capture)
under torch.profiler, with a range around each layer's attention, each layer's mHC + MoE, the head
and (`step`) what the step derives once from the positions for all layers.

- On CUDA: kernel launches per range (runtime launch, memcpy and memset calls), as a graph holds them.
- On CPU: aten ops that would be a kernel: a call into model/ops.py that runs a Triton kernel on CUDA
  counts as one (its reference's ops are not counted), otherwise every leaf aten op except the ones
  that only make views or allocate.

    python benchmarks/count_decode_ops.py [--device cuda] [--kv-format fp8] [--batch 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from v4.model import ops  # noqa: E402
from v4.model.config import CSA, HCA, V4Config  # noqa: E402
from v4.model.formats import keeps_float32  # noqa: E402
from v4.model.static_decode import StaticDecoder  # noqa: E402
from v4.model.v4 import Transformer  # noqa: E402

# ops.py entries that run one Triton kernel on CUDA (counted as one op on CPU)
KERNEL_OPS = ("rms_norm", "apply_rope", "rms_norm_rope", "compress_windows", "indexer_topk", "indexer_topk_fp8",
              "sparse_attention", "sparse_attention_fp8", "hc_pre", "hc_post", "hc_head", "route", "moe_experts",
              "moe_experts_quantized", "fp8_linear", "write_kv_fp8", "write_index_keys_fp8",
              "compress_step", "clamped_swiglu", "moe_experts_gemv", "fp8_gemv", "fp8_gemv_grouped", "ring_indices",
              "window_indices", "rope_angles")
NO_KERNEL = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::reshape",
             "aten::_reshape_alias", "aten::as_strided", "aten::transpose", "aten::t", "aten::permute",
             "aten::expand", "aten::select", "aten::slice", "aten::unsqueeze", "aten::squeeze", "aten::alias",
             "aten::detach", "aten::lift_fresh", "aten::resize_", "aten::unflatten", "aten::flatten",
             "aten::_unsafe_view", "aten::view_as", "aten::split", "aten::unbind", "aten::chunk",
             "aten::narrow", "aten::split_with_sizes", "aten::result_type", "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense",
             "aten::set_", "aten::numpy_T", "aten::expand_as", "aten::contiguous", "aten::lift",
             "aten::_to_copy", "aten::to", "aten::type_as", "aten::dim", "aten::size", "aten::stride",
             "aten::resolve_conj", "aten::resolve_neg", "aten::scalar_tensor"}
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaMemcpyAsync",
            "cudaMemsetAsync")
RANGE = "count::"


def small_flash_config() -> V4Config:
    """V4-Flash's decode-relevant shapes, narrow where the width does not change the op count."""
    return V4Config.from_dict({
        "model_type": "deepseek_v4", "vocab_size": 1024, "hidden_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 8, "q_lora_rank": 128, "o_groups": 2, "o_lora_rank": 64, "index_n_heads": 4,
        "index_topk": 64, "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
        "layer_types": [CSA, HCA], "num_hash_layers": 0, "num_nextn_predict_layers": 0,
        "max_position_embeddings": 1 << 20})


@contextlib.contextmanager
def ranges(decoder: StaticDecoder, device: torch.device) -> Iterator[None]:
    """Profiler ranges around each layer's attention and rest, and the head; on CPU each Triton-backed
    ops.py call is a range of its own (counted once)."""
    model, saved = decoder.model, {}

    def ranged(name: str, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)
        return call

    attend = decoder._attend
    decoder._attend = lambda attn, *args: ranged(f"{RANGE}attention {attn.layer_type}", attend)(attn, *args)
    positions = decoder._positions
    positions.update = ranged(f"{RANGE}step", positions.update)
    for block in model.layers:
        block.mix = ranged(f"{RANGE}layer {block.attn.layer_type}", block.mix)
    model.logits = ranged(f"{RANGE}head", model.logits)
    model.embed_streams = ranged(f"{RANGE}head", model.embed_streams)
    if device.type == "cpu":
        for name in KERNEL_OPS:
            saved[name] = getattr(ops, name)
            setattr(ops, name, ranged(f"kernel::{name}", saved[name]))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(ops, name, fn)
        del decoder._attend, model.logits, model.embed_streams, positions.update
        for block in model.layers:
            del block.mix


def count(events, device: torch.device, detail: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Kernels (or kernel-like ops) under each `count::` range, innermost range wins; `detail` gets the
    counted names per range."""
    totals: dict[str, int] = {}

    def owner(event) -> str | None:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith(RANGE):
                return parent.name[len(RANGE):]
            parent = parent.cpu_parent
        return None

    def inside_kernel(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("kernel::"):
                return True
            parent = parent.cpu_parent
        return False

    below: dict[int, bool] = {}

    def work_below(event) -> bool:
        """Whether any op under `event` is kernel-like (memoised)."""
        if id(event) not in below:
            below[id(event)] = any(is_kernel_like(child) or work_below(child) for child in event.cpu_children)
        return below[id(event)]

    def is_kernel_like(event) -> bool:
        """An aten op that does work and calls no other such op (the op that would launch)."""
        return event.name.startswith("aten::") and event.name not in NO_KERNEL and not work_below(event)

    for event in events:
        if device.type == "cuda":
            hit = event.name in LAUNCHES
        elif event.name.startswith("kernel::"):
            hit = not inside_kernel(event)
        else:
            hit = is_kernel_like(event) and not inside_kernel(event)
        name = owner(event) if hit else None
        if name is not None:
            totals[name] = totals.get(name, 0) + 1
            if detail is not None:
                detail.setdefault(name, []).append(event.name)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kv-format", default="float", choices=("float", "fp8"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--detail", action="store_true", help="also list the counted ops per range")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = small_flash_config()
    with torch.device(device):
        model = Transformer(config, with_mtp=False).eval()
    for name, parameter in model.named_parameters():  # the dtypes the loader gives them
        parameter.data = parameter.data.to(torch.float32 if keeps_float32(name) else torch.bfloat16)
    model.materialize_buffers(device)
    decoder = StaticDecoder(model, batch=args.batch, capacity=args.context + 1, use_graph=False,
                            kv_format=args.kv_format)
    decoder.token_ids.copy_(torch.randint(0, config.vocab_size, (args.batch,)))
    decoder.positions.fill_(args.context)
    with torch.no_grad():
        decoder._forward()  # warm-up: lazy init, autotuning
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with ranges(decoder, device), profile(activities=activities) as prof:
            decoder._forward()
            if device.type == "cuda":
                torch.cuda.synchronize()
    detail: dict[str, list[str]] = {}
    totals = count(prof.events(), device, detail)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "counted": "kernel launches" if device.type == "cuda" else "kernel-like aten ops",
              "kv_format": args.kv_format, "batch": args.batch, "context": args.context}
    for kind, short in ((CSA, "csa"), (HCA, "hca")):
        attention = totals.get(f"attention {kind}", 0)
        result[short] = {"attention": attention, "mhc_moe": totals.get(f"layer {kind}", 0),
                         "layer": attention + totals.get(f"layer {kind}", 0)}
    result["head"] = totals.get("head", 0)
    result["step"] = totals.get("step", 0)  # once per step for all layers: indices from the positions
    if args.detail:
        result["detail"] = {name: dict(sorted(Counter(names).items(), key=lambda kv: -kv[1]))
                            for name, names in detail.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
