"""Offload that plans itself (issue 28): from a checkpoint's config and tensor sizes (safetensors headers,
nothing loaded) and a GPU-memory budget, decide where the weights live.

Everything that is not a routed expert (attention, shared experts, norms, mHC, embedding, head, the MTP
block's dense part) must be on the GPU: it runs for every token. What is left of the budget after those
and after a runtime reserve (`Reserve`: decode state, activations, CUDA graphs) is shared evenly by the
MoE layers as routed-expert slots (model/offload.py's ExpertCache); if every expert fits there is no
offload at all. The refusal is one line naming the numbers: when the dense weights alone do not fit,
or fewer than `MIN_SLOTS` experts per layer would.

Host side, every routed expert has a host copy the GPU cache is filled from: pinned (page-locked, copies
are DMA at PCIe speed) when they fit in the memory the OS says is available, else memory-mapped from the
checkpoint files (weights.py's `mapped`). The cost of mmap, stated here because the plan chooses it:
a miss reads from the page cache when the kernel kept the expert's pages, from disk otherwise (NVMe,
a few GB/s, and the first use of every expert is such a read); the copy to the GPU is from pageable
memory, which the driver stages through a pinned bounce buffer (roughly half the pinned bandwidth);
and the page cache competes with every other process, so the hit rate of the GPU cache matters more.
mmap needs the experts placed exactly as stored (FP8/FP4 kept quantised, or float stored in the
engine's dtype); a dequantising load with too little host memory is refused.

Sizes are in bytes; `--gpu-memory` is in GiB (2**30 bytes), as nvidia-smi's MiB are 2**20.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import state_bytes_per_token
from .config import V4Config
from .formats import ROUTED_EXPERT, is_routed_expert, keeps_float32, linear_weights, stored_format
from .offload import ExpertCache, OffloadError
from .weights import INTEGER_DTYPES, Stored, mappable, scan

GIB = 2**30
MIN_SLOTS = 2  # ExpertCache's floor: half the cache streams while the other half computes
RESERVE_CONTEXT_TOKENS = 131_072  # decode-state tokens the reserve holds (longer contexts: a smaller budget)
RESERVE_CHUNK_TOKENS = 4_096  # a prefill chunk on CUDA (engine.PREFILL_CHUNKS["cuda"].forward_tokens)
RESERVE_FIXED_BYTES = GIB  # CUDA graphs' shared pool, cuBLAS/Triton workspaces, allocator fragmentation
HOST_MARGIN_BYTES = 8 * GIB  # host memory left to the OS, the page cache of everything else, this process
HOST_MARGIN_SHARE = 0.1  # ... or this share of what is available, whichever is more


def _gib(size: int | float) -> str:
    return f"{size / GIB:.3g} GiB"


class OffloadPlanError(OffloadError):
    """A budget the model cannot run in: the message names the bytes needed and given."""


@dataclass(frozen=True, slots=True)
class Reserve:
    """GPU memory kept back from the weights for the engine's run-time tensors, sized from the config:
    `state_bytes` the decode state of `context_tokens` tokens (compressed entries and indexer keys per
    token, plus every layer's sliding window), `activation_bytes` the largest live tensors of one prefill
    chunk (mHC streams in float32 x3, attention queries and output, each routed pair's gate/up and its
    float32 output), `fixed_bytes` the rest (graphs, workspaces, fragmentation)."""

    state_bytes: int
    activation_bytes: int
    fixed_bytes: int
    context_tokens: int

    @property
    def total(self) -> int:
        return self.state_bytes + self.activation_bytes + self.fixed_bytes


def runtime_reserve(config: V4Config, dtype_bytes: int, fp8_state: bool = False,
                    context_tokens: int = RESERVE_CONTEXT_TOKENS, chunk_tokens: int = RESERVE_CHUNK_TOKENS) -> Reserve:
    """The reserve for a model of `config` run in a dtype of `dtype_bytes` bytes (see `Reserve`)."""
    layers = config.num_hidden_layers + config.num_nextn_predict_layers
    windows = layers * config.sliding_window * config.head_dim * dtype_bytes
    state = math.ceil(state_bytes_per_token(config, fp8_state) * context_tokens) + windows
    streams = 3 * config.hc_mult * config.hidden_size * 4
    attention = 2 * config.num_attention_heads * config.head_dim * dtype_bytes
    pairs = config.num_experts_per_tok * (2 * config.moe_intermediate_size * dtype_bytes + config.hidden_size * 4)
    return Reserve(state, chunk_tokens * (streams + attention + pairs), RESERVE_FIXED_BYTES, context_tokens)


# ------------------------------------------------------------------ tensor sizes as placed


def sizes_from_stored(stored: dict[str, Stored], quantized: bool, dtype: torch.dtype) -> dict[str, int]:
    """Bytes each tensor takes once loaded, from the checkpoint's headers (weights.scan): a quantised
    weight kept as stored takes its stored bytes with its scale's; a float one is held in `dtype`
    (float32 for norms, mHC, sinks, gate bias); integer tables as stored."""
    sizes = {}
    for name, item in stored.items():
        numel = math.prod(item.shape)
        if item.scale is not None:
            sizes[name] = item.nbytes if quantized else numel * dtype.itemsize
        elif item.dtype in INTEGER_DTYPES:
            sizes[name] = item.nbytes
        else:
            sizes[name] = numel * (4 if keeps_float32(name) else dtype.itemsize)
    return sizes


def sizes_from_config(config: V4Config, quantized: bool, dtype: torch.dtype) -> dict[str, int]:
    """`sizes_from_stored` for a checkpoint laid out as DeepSeek ships it (formats.py: FP4 routed experts
    with a scale per 1x32, FP8 linears with one per 128x128 block), from the config alone: the model is
    built on the meta device (a few seconds at V4-Flash's size), nothing is read."""
    from .v4 import Transformer

    with torch.device("meta"):
        model = Transformer(config, with_mtp=config.num_nextn_predict_layers > 0)
    linear = linear_weights(model)
    sizes = {}
    for name, tensor in model.state_dict().items():
        numel, fmt = tensor.numel(), stored_format(name, linear)
        if quantized and fmt == "fp4":
            sizes[name] = numel // 2 + numel // 32
        elif quantized and fmt == "fp8":
            rows, cols = tensor.shape
            sizes[name] = numel + math.ceil(rows / 128) * math.ceil(cols / 128)
        elif not tensor.is_floating_point():
            sizes[name] = numel * tensor.element_size()
        else:
            sizes[name] = numel * (4 if keeps_float32(name) else dtype.itemsize)
    return sizes


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class OffloadPlan:
    """Where the weights live. `slots` None: every routed expert on the GPU (no offload); else that many
    per MoE layer cached on the GPU, all of them on the host as `host` says ("pinned" or "mmap")."""

    gpu_bytes: int | None  # the budget: what the engine may use on the GPU (None: not bounded, slots given)
    reserve: Reserve
    dense_bytes: int  # everything but the routed experts: always on the GPU
    expert_bytes: int  # one routed expert (w1, w3, w2 with their scales) as placed
    num_experts: int  # routed experts per MoE layer
    num_moe_layers: int  # MoE layers with routed experts, MTP blocks included
    slots: int | None
    host: str | None  # "pinned" | "mmap" | None (no offload)

    @property
    def offload(self) -> bool:
        return self.slots is not None

    @property
    def experts_on_gpu(self) -> int:
        """Routed experts per MoE layer resident on the GPU."""
        return self.num_experts if self.slots is None else self.slots

    @property
    def gpu_weight_bytes(self) -> int:
        return self.dense_bytes + self.num_moe_layers * self.experts_on_gpu * self.expert_bytes

    @property
    def host_expert_bytes(self) -> int:
        """Routed experts' bytes held on the host (all of them, under offload; none without)."""
        return 0 if self.slots is None else self.num_moe_layers * self.num_experts * self.expert_bytes

    def placement(self) -> dict[str, int | None]:
        """Bytes per place (weights on the GPU, experts pinned or memory-mapped on the host) and experts
        per layer: what `--json` and the TUI report."""
        host = self.host_expert_bytes
        return {"gpu_bytes": self.gpu_weight_bytes, "pinned_bytes": host if self.host == "pinned" else 0,
                "mmap_bytes": host if self.host == "mmap" else 0,
                "experts_per_layer_on_gpu": self.experts_on_gpu, "experts_per_layer": self.num_experts,
                "reserve_bytes": self.reserve.total, "budget_bytes": self.gpu_bytes}

    def describe(self) -> str:
        """One line for people: where the weights live."""
        gpu = f"{_gib(self.gpu_weight_bytes)} of weights on the GPU"
        if self.slots is None:
            return f"{gpu} (everything fits {_gib(self.gpu_bytes or 0)}; no offload)"
        return (f"{gpu} ({self.slots} of {self.num_experts} routed experts per layer), "
                f"{_gib(self.host_expert_bytes)} of experts in {self.host} host memory")


def plan_offload(sizes: dict[str, int], gpu_bytes: int | None, reserve: Reserve, host_bytes: int | None = None,
                 slots: int | None = None, mappable: bool = True) -> OffloadPlan:
    """Place the tensors of `sizes` (name -> bytes as placed) in a GPU budget of `gpu_bytes`, keeping
    `reserve` back; `host_bytes` is the host memory the experts may take (None: `available_host_bytes`).
    `slots` fixes the experts per layer (`--offload-experts`) instead of fitting them (then `gpu_bytes`
    None leaves the budget unchecked).

    Raises:
        OffloadPlanError: the dense weights, or `MIN_SLOTS` experts per layer, do not fit the budget;
            or the experts fit neither host memory nor (`mappable` False) an mmap of the checkpoint.
    """
    dense, expert_bytes, num_experts, num_layers = _split(sizes)
    if not num_layers:
        raise OffloadPlanError("the model has no routed experts to place")
    if gpu_bytes is None and slots is None:
        raise OffloadPlanError("a plan needs a GPU budget or a number of experts per layer")
    free = (gpu_bytes or 0) - reserve.total - dense
    budget = (f"{_gib(gpu_bytes or 0)} of GPU memory less {_gib(reserve.total)} kept for the "
              f"decode state ({reserve.context_tokens} tokens), activations and graphs")
    if gpu_bytes is not None and free < 0:
        raise OffloadPlanError(f"the weights other than routed experts need {_gib(dense)}; {budget} "
                               f"leaves {_gib(max(0, gpu_bytes - reserve.total))}")
    if slots is not None:
        slots = min(slots, num_experts)  # asked for: offloaded even when all fit (the cache then holds all)
    else:
        fitting = free // (num_layers * expert_bytes)
        if fitting < MIN_SLOTS:
            per_layer = MIN_SLOTS * num_layers * expert_bytes
            raise OffloadPlanError(f"{budget} leaves {_gib(free)} beside the other weights "
                                   f"({_gib(dense)}); {MIN_SLOTS} routed experts in each of {num_layers} "
                                   f"MoE layers need {_gib(per_layer)}")
        if fitting >= num_experts:
            return OffloadPlan(gpu_bytes, reserve, dense, expert_bytes, num_experts, num_layers, None, None)
        slots = int(fitting)
    host_total = num_layers * num_experts * expert_bytes
    available = available_host_bytes() if host_bytes is None else host_bytes
    host = "pinned" if host_total <= available else "mmap"
    if host == "mmap" and not mappable:
        raise OffloadPlanError(f"the routed experts need {_gib(host_total)} of host memory and "
                               f"{_gib(available)} are available; they could be memory-mapped from the "
                               "checkpoint only if loaded as stored (quantized)")
    return OffloadPlan(gpu_bytes, reserve, dense, expert_bytes, num_experts, num_layers, slots, host)


def whole_plan(sizes: dict[str, int], gpu_bytes: int, reserve: Reserve) -> OffloadPlan:
    """Every tensor of `sizes` on the GPU, unchecked: no offload."""
    dense, expert_bytes, num_experts, num_layers = _split(sizes)
    return OffloadPlan(gpu_bytes, reserve, dense, expert_bytes, num_experts, num_layers, None, None)


def _split(sizes: dict[str, int]) -> tuple[int, int, int, int]:
    """(bytes of everything but the routed experts, one routed expert's bytes, experts per MoE layer,
    MoE layers with routed experts) of `sizes`."""
    dense, experts = 0, {}
    for name, size in sizes.items():
        match = ROUTED_EXPERT.match(name)  # (the MoE, the expert id, w1|w2|w3, weight|scale)
        if match is None:
            dense += size
        else:
            key = (match.group(1), int(match.group(2)))
            experts[key] = experts.get(key, 0) + size
    layers = {moe for moe, _ in experts}
    if not layers:
        return dense, 0, 0, 0
    return dense, max(experts.values()), len(experts) // len(layers), len(layers)


def offload_report(plan: OffloadPlan | None, caches: list[ExpertCache]) -> dict[str, object] | None:
    """Where the weights live and how the expert caches did, summed over the layers (None: nothing is
    offloaded): what `v4 generate --json`, `v4 refactor --json` and the TUI's status bar report."""
    if not caches:
        return None
    stats = [cache.stats for cache in caches]
    hits, misses = sum(s.hits for s in stats), sum(s.misses for s in stats)
    placement = plan.placement() if plan is not None else {"experts_per_layer_on_gpu": caches[0].slots,
                                                           "experts_per_layer": caches[0].num_experts}
    return {**placement, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "hits": hits, "misses": misses, "cpu_experts": sum(s.cpu_experts for s in stats),
            "prefetched": sum(s.prefetched for s in stats), "prefetch_hits": sum(s.prefetch_hits for s in stats),
            "copied_bytes": sum(s.bytes_copied for s in stats)}


def plan_checkpoint(path: Path, dtype: torch.dtype, quantized: bool, device: torch.device | str,
                    slots: int | None = None, gpu_bytes: int | None = None, fp8_state: bool = False,
                    host_bytes: int | None = None, stored: dict | None = None) -> OffloadPlan:
    """`plan_offload` for the checkpoint at `path` loaded in `dtype` (`quantized`: FP8/FP4 kept as
    stored), from its config.json and safetensors headers. The budget: `gpu_bytes`; else, unless
    `slots` fixes the experts per layer, what is free on `device` now, and then a model whose weights
    fit there is loaded whole, as before there was a planner (the reserve is an estimate: it decides
    how many experts fit, never refuses a model that fits). `stored`: the checkpoint's map (weights.scan)
    when the caller has it already (the loader reads it next)."""
    config = V4Config.from_json(path)
    stored = scan(path) if stored is None else stored
    sizes = sizes_from_stored(stored, quantized, dtype)
    reserve = runtime_reserve(config, dtype.itemsize, fp8_state)
    if gpu_bytes is None and slots is None:
        gpu_bytes = free_gpu_bytes(device)
        if sum(sizes.values()) <= gpu_bytes:
            return whole_plan(sizes, gpu_bytes, reserve)
    experts = [item for name, item in stored.items() if is_routed_expert(name)]
    return plan_offload(sizes, gpu_bytes, reserve, host_bytes, slots,
                        mappable=all(mappable(item, quantized, dtype) for item in experts))


def available_host_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Host memory the routed experts may take: MemAvailable (os.sysconf's free pages where there is no
    /proc/meminfo) less HOST_MARGIN_BYTES or HOST_MARGIN_SHARE of it, whichever is more."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
        available = int(found.group(1)) * 1024 if found else None
    except OSError:
        available = None
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(0, available - max(HOST_MARGIN_BYTES, int(HOST_MARGIN_SHARE * available)))


def free_gpu_bytes(device: torch.device | str) -> int:
    """What this process could use on `device` now (the default budget): the driver's free memory and
    what torch's allocator holds cached but unused (an earlier engine's, freed)."""
    device = torch.device(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + cached

