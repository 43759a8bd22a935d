"""V4 MoE: a shared expert plus routed experts chosen by score (`sqrtsoftplus` + correction bias) or,
in the first `num_hash_layers`, by a fixed token-id -> experts table; clamped SwiGLU everywhere.

How the routed experts run (float or quantised weights, all here or this rank's share, on the device or
from host memory) is one `ExpertStrategy` per MoE, which the modules that change it replace whole. On
CUDA only the offload path reads anything back to the host: no shape depends on the routing (under
expert parallel, pairs of another rank's experts run as `ops.NO_EXPERT` rows, zero), so a step can be
CUDA-graphed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .config import HASH_MOE, V4Config

# At or below this many tokens quantised routed experts run the decode grouped GEMV (kernels/decode_moe.py:
# each used expert's weights read once, CUDA-core dequantisation), above it the grouped GEMM. Measured on
# an H100 (benchmarks/results/decode_gemv_h100.md, V4-Flash experts, top 6): FP8 59 vs 94 us at 1 token
# and even at 8; FP4, since its GEMV keeps one accumulator and loads whole scale groups (session 11,
# benchmarks/results/decode_experts_fp4_h100.md), 72 vs 122 us at 1 token, 134 vs 211 at 2, 490 vs 662 at 8.
GEMV_MAX_TOKENS = {"fp8": 8, "fp4": 8}
# Up to this many rows (a decode or verify step) the shared expert's w1 and w3 run as one stacked FP8 GEMV
# when a decoder has stacked them (Expert.pair); the FP8 projections take the GEMV up to 2 rows too.
PAIR_MAX_ROWS = 2


class RoutedExperts(Protocol):
    """Where routed experts run when they are not all on the device: `model/offload.py`'s ExpertCache,
    attached from outside after the model is built (so this module does not import offload)."""

    def routed(self, x: Tensor, weights: Tensor, ids: Tensor,
               run: Callable[[Tensor, Tensor, Tensor, tuple[Tensor, ...]], Tensor],
               meanwhile: Callable[[], Tensor], token_ids: Tensor | None = None) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True, slots=True)
class ExpertShard:
    """Expert parallel (model/parallel.py): this rank holds experts [start, end) only (a pair routed
    elsewhere runs as `ops.NO_EXPERT`, a zero row), and `reduce` sums the ranks' routed outputs."""

    start: int
    end: int
    reduce: Callable[[Tensor], Tensor]


@dataclass(frozen=True, slots=True)
class ExpertStrategy:
    """How a MoE runs its routed experts. The default is the single-process engine: float weights, every
    expert on the device. quantized_linear.py sets `fmt`, parallel.py `shard`, offload.py `offload`,
    each by replacing the MoE's strategy (`dataclasses.replace`), so its whole state is this one value."""

    fmt: str | None = None  # "fp8" | "fp4": the experts hold quantised weights + scales
    shard: ExpertShard | None = None
    offload: RoutedExperts | None = None  # routed experts in host memory, a cache of them on the GPU

    def __post_init__(self) -> None:
        if self.fmt not in (None, "fp8", "fp4"):
            raise ValueError(f"routed experts are float (None), 'fp8' or 'fp4', got {self.fmt!r}")
        if self.shard is not None and self.offload is not None:
            raise ValueError("expert offload and expert parallelism do not combine; use one")

    @property
    def leaves(self) -> tuple[str, ...]:
        """The tensors each expert projection holds: its weight, and its scale when quantised."""
        return ("weight",) if self.fmt is None else ("weight", "scale")


class Expert(nn.Module):
    """SwiGLU `w2(silu(w1 x) * w3 x)` with the gate clamped above and the up projection both ways.

    `pair`, when a decoder sets it (fused_inputs.shared_expert_pair), computes w1 and w3 of a few rows as
    one FP8 GEMV over their stacked weights (outputs by name); more rows keep the two GEMMs, so a
    prefill's numbers do not depend on whether a decoder was made."""

    def __init__(self, hidden_size: int, intermediate_size: int, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.w1 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.w2 = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.w3 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.pair: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pair is not None and x.numel() <= PAIR_MAX_ROWS * x.shape[-1]:
            outs = self.pair(x)
            return self.w2(ops.clamped_swiglu(outs["w1"], outs["w3"], self.limit))
        return self.w2(ops.clamped_swiglu(self.w1(x), self.w3(x), self.limit))


class Gate(nn.Module):
    """Routing weights and expert ids per token: `[N, k]` float32 and `[N, k]` int64."""

    def __init__(self, config: V4Config, layer: int) -> None:
        super().__init__()
        self.config = config
        self.hashed = config.mlp_type(layer) == HASH_MOE
        # float32 whatever the model's dtype (formats.keeps_float32): scored in float32 as DeepSeek does
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size, dtype=torch.float32))
        if self.hashed:
            self.register_buffer("tid2eid", torch.zeros(config.vocab_size, config.num_experts_per_tok, dtype=torch.long))
        else:
            self.bias = nn.Parameter(torch.zeros(config.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight.float())
        config = self.config
        hash_ids = self.tid2eid[token_ids].long() if self.hashed else None
        bias = None if self.hashed else self.bias.float()  # steers which experts are chosen, not their weight
        return ops.route(logits, bias, hash_ids, config.num_experts_per_tok, config.scoring_func,
                         config.norm_topk_prob, config.routed_scaling_factor)


class MoE(nn.Module):
    """Shared expert + `num_experts_per_tok` routed experts per token."""

    def __init__(self, config: V4Config, layer: int) -> None:
        super().__init__()
        self.gate = Gate(config, layer)
        self.experts = nn.ModuleList(
            Expert(config.hidden_size, config.moe_intermediate_size, config.swiglu_limit)
            for _ in range(config.n_routed_experts)
        )
        self.shared_experts = Expert(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts,
                                     config.swiglu_limit)
        self.limit = config.swiglu_limit
        self.strategy = ExpertStrategy()
        self._stacked: tuple[torch.Tensor, ...] | None = None

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """x: `[B, S, hidden]`, token_ids: `[B, S]` -> `[B, S, hidden]`."""
        flat = x.reshape(-1, x.shape[-1])
        weights, indices = self.gate(flat, token_ids.reshape(-1))
        strategy = self.strategy
        if strategy.offload is not None:
            routed, shared = strategy.offload.routed(flat, weights, indices, self._run_experts,
                                                     lambda: self.shared_experts(flat), token_ids.reshape(-1))
            return (routed + shared).view_as(x)
        if strategy.shard is not None:
            routed = self._local_routed(flat, weights, indices, strategy.shard)
            return (routed + self.shared_experts(flat)).view_as(x)
        return self._routed(flat, weights, indices, self.shared_experts(flat)).view_as(x)

    def _routed(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                shared: torch.Tensor | None = None) -> torch.Tensor:
        """The held experts' weighted sum through the grouped GEMM, on quantised stacks if quantised, plus
        the shared expert's output `shared` if given."""
        stacks = self.stacked_weights() if self.strategy.fmt is None else self.stacked_quantized()
        return self._run_experts(x, weights, ids, stacks, shared)

    def _run_experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                     stacks: tuple[torch.Tensor, ...], addend: torch.Tensor | None = None) -> torch.Tensor:
        """The grouped GEMM on `stacks` (this MoE's experts, or the offload cache's slots); the decode
        GEMV for a few tokens. Both are chosen by shape alone: no host sync (the step is graphed). Plus
        `addend` if given (`routed + addend`): the decode GEMV adds it in its own last launch."""
        fmt = self.strategy.fmt
        if fmt is not None and x.shape[0] <= GEMV_MAX_TOKENS.get(fmt, 0) and \
                ops.moe_experts_gemv_supported(x, fmt, stacks[0]):
            return ops.moe_experts_gemv(x, weights, ids, fmt, *stacks, self.limit, addend)
        if fmt is None:
            routed = ops.moe_experts(x, weights, ids, *stacks, self.limit)
        else:
            routed = ops.moe_experts_quantized(x, weights, ids, fmt, *stacks, self.limit)
        return routed if addend is None else routed + addend

    def _local_routed(self, flat: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                      shard: ExpertShard) -> torch.Tensor:
        """Expert parallel: every (token, slot) pair as a row of its own through the same kernels, a pair
        routed to another rank's expert given `ops.NO_EXPERT` (a zero row, no weights read), so no shape
        depends on the routing: no host sync, and a graphed step could hold it. The rows are summed over
        slots in float32 and then over ranks (all_reduce); every rank gets the full routed sum in x's dtype.
        The kernel is chosen by rows, N k here: the FP8 decode GEMV takes one token of top 6, FP4's none."""
        (num_tokens, k), hidden = indices.shape, flat.shape[-1]
        local = (indices >= shard.start) & (indices < shard.end)
        ids = torch.where(local, indices - shard.start, ops.NO_EXPERT).reshape(-1, 1)
        rows = flat[:, None].expand(num_tokens, k, hidden).reshape(num_tokens * k, hidden)
        out = self._routed(rows, weights.reshape(-1, 1), ids).float()  # [N k, hidden], zero where not local
        return shard.reduce(out.view(num_tokens, k, hidden).sum(1)).to(flat.dtype)

    def stacked_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The routed experts' w1, w3 `[E, I, H]` and w2 `[E, H, I]` as single tensors, for the grouped
        GEMM. Built once (and again if the weights were moved or reloaded); each expert's parameters
        become views into them, so the weights are held once."""
        w1, w3, w2 = self._stacks(("weight",))
        return w1, w3, w2

    def stacked_quantized(self) -> tuple[torch.Tensor, ...]:
        """Quantised experts (`strategy.fmt`): w1, its scales, w3, its scales, w2, its scales, each
        stacked `[E, ...]` as `stacked_weights` stacks the float ones."""
        return self._stacks(("weight", "scale"))

    def _stacks(self, leaves: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        """For w1, w3, w2 in turn, each of `leaves` of every held expert stacked; built once (and again if
        the weights were moved, reloaded or requantised), the experts' tensors then being views into it."""
        first = next(iter(self.experts))  # the lowest held expert (keys are global ids under expert parallel)
        cached, held = self._stacked, first.w1.weight
        if cached is not None and len(cached) == 3 * len(leaves) and cached[0].dtype == held.dtype \
                and cached[0].data_ptr() == held.data_ptr() and cached[0].device == held.device:
            return cached
        self._stacked = cached = None  # an outdated stack (e.g. the float one before quantising) goes first
        stacks = []
        for name in ("w1", "w3", "w2"):
            for leaf in leaves:
                tensors = [getattr(getattr(expert, name), leaf) for expert in self.experts]
                stack = torch.stack([t.data for t in tensors])
                for tensor, view in zip(tensors, stack):
                    tensor.data = view
                stacks.append(stack)
        self._stacked = tuple(stacks)
        return self._stacked

    def hold_stacks(self, stacks: tuple[torch.Tensor, ...]) -> None:
        """Make `stacks` (laid out as `stacked_weights`, or `stacked_quantized` when quantised, returns
        them) the experts' storage: each expert's tensors become views into them, and they the cached
        stacks (offload.py moves the experts to host memory this way)."""
        pairs = [(proj, leaf) for proj in ("w1", "w3", "w2") for leaf in self.strategy.leaves]
        if len(stacks) != len(pairs):
            raise ValueError(f"expected {len(pairs)} stacks ({pairs}), got {len(stacks)}")
        for (proj, leaf), stack in zip(pairs, stacks):
            for expert, view in zip(self.experts, stack):
                getattr(getattr(expert, proj), leaf).data = view
        self._stacked = tuple(stacks)
