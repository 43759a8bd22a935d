"""Running one model across the ranks of one host (torch.distributed, launched by torchrun), as DeepSeek's
reference inference and vLLM do: the same modules, sharded after they are built on the meta device and
before any weight is read, so each rank reads and holds only its share.

What is sharded (W ranks, this rank r):
  - routed experts (expert parallel): rank r holds experts [r E/W, (r+1) E/W). Routing is replicated
    (every rank sees every token and the same gate), each rank sums the weighted outputs of the pairs
    routed to its experts, and an all_reduce(sum) in float32 combines them; the shared expert is
    replicated and added once, after the reduce. Every (token, slot) pair keeps its row on every rank,
    those of other ranks' experts as NO_EXPERT (the kernels give them zero rows, reading no weights),
    so selecting a rank's pairs needs no host sync (moe.py `_local_routed`).
  - attention (tensor parallel, when heads % W == 0 and o_groups % W == 0): wq_b's rows and the sinks
    of the local heads, the attention core over them, wo_a's rows of the local head groups, wo_b's
    input columns of those groups, then all_reduce(sum). wq_a, wkv, the compressor and the indexer
    are replicated (they are shared by all heads). The decode state is the same on every rank (one
    KV vector per token, K = V), so it is not sharded. Otherwise attention stays replicated.
  - the embedding and the head by vocabulary: each rank holds rows [r V', (r+1) V') (V' = ceil(V/W));
    the embedding looks up the ids in its range, zeros elsewhere, all_reduce; the head computes its
    logits slice and an all_gather assembles the whole vocabulary on every rank.
Everything else (norms, mHC, gates, Engram) is replicated. Every rank ends with the same logits, so
sampling (same seed) picks the same tokens everywhere. Weights kept quantised shard alike: whole FP4/FP8
experts, and FP8 slices with their rows or columns of 128x128 block scales (weights.scale_slice); a
slice that would cut a scale block (test-sized models only) is dequantised on its rank.

World size 1 is the single-process engine: nothing here is called and no module changes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import V4Config
from .formats import is_routed_expert

NARROW = tuple[int, int, int]  # (dim, start, end) of a stored tensor this rank keeps
# NCCL/torch settings a CUDA group starts with unless the caller's environment already sets them:
# NVLink multicast (NVLS, symmetric-memory multicast) off, as the machines this engine runs on need.
NO_MULTICAST: Mapping[str, str] = MappingProxyType({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"})


@dataclass(frozen=True)
class Parallel:
    """This process's place in the group: rank, world size, the local GPU index, the group (None: the
    default group)."""

    rank: int
    world: int
    local_rank: int = 0
    group: object | None = None

    def span(self, total: int) -> tuple[int, int]:
        """[start, end) of an even split of `total` items (the last rank may hold fewer)."""
        each = -(-total // self.world)
        return min(total, self.rank * each), min(total, (self.rank + 1) * each)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place on a contiguous tensor, which is returned)."""
        tensor = tensor.contiguous()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def all_gather_last(self, tensor: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate each rank's slice along the last dim (slices of `span(total)`, padded to equal
        width for the collective, trimmed after) -> `[..., total]`."""
        each = -(-total // self.world)
        pad = each - tensor.shape[-1]
        if pad:
            tensor = F.pad(tensor, (0, pad))
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)[..., :total]


def init_from_env(device: str | None = None, nccl_env: Mapping[str, str] = NO_MULTICAST) -> Parallel | None:
    """The process group of a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR/PORT), or None
    without one or with WORLD_SIZE 1. Backend nccl for CUDA, gloo for CPU (`device` decides; default:
    CUDA when available). An already-initialised default group is reused.

    `nccl_env`: environment variables a CUDA group needs before NCCL starts, set in this process only
    where the environment does not already name them (default `NO_MULTICAST`; pass {} to set none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if cuda:
        for key, value in nccl_env.items():
            os.environ.setdefault(key, value)  # read by NCCL when the group's communicator starts
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device("cuda", local_rank)} if cuda else {}
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, **kwargs)
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(f"the default process group is rank {dist.get_rank()} of {dist.get_world_size()}; "
                           f"the environment says {rank} of {world}")
    return Parallel(rank, world, local_rank)


def current() -> Parallel | None:
    """The default group as a Parallel if one is initialised with more than one rank, else None."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() <= 1:
        return None
    return Parallel(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


class VocabParallelEmbedding(nn.Module):
    """`nn.Embedding` over this rank's vocabulary rows (`weight` `[rows, hidden]`, the checkpoint's
    `embed.weight` slice): ids outside [start, end) give zeros, and the all_reduce fills them in."""

    def __init__(self, vocab_size: int, hidden_size: int, parallel: Parallel) -> None:
        super().__init__()
        self.parallel = parallel
        self.start, self.end = parallel.span(vocab_size)
        self.weight = nn.Parameter(torch.empty(self.end - self.start, hidden_size))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = (ids >= self.start) & (ids < self.end)
        rows = F.embedding(torch.where(local, ids - self.start, 0), self.weight)
        return self.parallel.all_reduce(rows * local.unsqueeze(-1).to(rows.dtype))


class VocabParallelHead(nn.Module):
    """The output head over this rank's vocabulary rows; the logits of all ranks are gathered, so it
    returns `[..., vocab]` like `nn.Linear(hidden, vocab)`."""

    def __init__(self, vocab_size: int, hidden_size: int, parallel: Parallel) -> None:
        super().__init__()
        self.parallel, self.vocab_size = parallel, vocab_size
        start, end = parallel.span(vocab_size)
        self.weight = nn.Parameter(torch.empty(end - start, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parallel.all_gather_last(F.linear(x, self.weight), self.vocab_size)


def world_of(model: nn.Module) -> int:
    """The ranks `model` is sharded over (shard_model gave it a VocabParallelEmbedding); 1 for a whole model."""
    embed = getattr(model, "embed", None)
    return embed.parallel.world if isinstance(embed, VocabParallelEmbedding) else 1


def attention_is_split(config: V4Config, parallel: Parallel) -> bool:
    """Whether attention is tensor parallel at this world size (else it is replicated)."""
    return config.num_attention_heads % parallel.world == 0 and config.o_groups % parallel.world == 0


def check(config: V4Config, parallel: Parallel) -> None:
    """ValueError unless the routed experts split evenly over the ranks (each rank holds a whole share)."""
    if config.n_routed_experts % parallel.world:
        raise ValueError(f"{config.n_routed_experts} routed experts do not split evenly over {parallel.world} ranks")


def shard_model(model: nn.Module, parallel: Parallel) -> dict[str, NARROW]:
    """Shard `model` (built on the meta device, nothing loaded) in place for `parallel`; returns, for
    each tensor kept in part, the (dim, start, end) of the stored tensor this rank reads. Tensors of
    other ranks' experts are no longer in the model's state_dict."""
    from .attention import Attention
    from .moe import ExpertShard, MoE

    config = model.config
    check(config, parallel)
    narrow: dict[str, NARROW] = {}
    with torch.device(model.embed.weight.device):  # the meta device: nothing is allocated yet
        model.embed = VocabParallelEmbedding(config.vocab_size, config.hidden_size, parallel)
        model.head = VocabParallelHead(config.vocab_size, config.hidden_size, parallel)
    start, end = parallel.span(config.vocab_size)
    narrow["embed.weight"] = narrow["head.weight"] = (0, start, end)
    split_attention = attention_is_split(config, parallel)
    for name, module in model.named_modules():
        if isinstance(module, MoE):
            lo, hi = parallel.span(config.n_routed_experts)
            module.experts._modules = OrderedDict((str(e), module.experts._modules[str(e)]) for e in range(lo, hi))
            module.strategy = replace(module.strategy, shard=ExpertShard(lo, hi, parallel.all_reduce))
        elif isinstance(module, Attention) and split_attention:
            narrow.update({f"{name}.{leaf}": n for leaf, n in _split_attention(module, parallel).items()})
    return narrow


def _split_attention(attn: nn.Module, parallel: Parallel) -> dict[str, NARROW]:
    config = attn.config
    heads, groups = config.num_attention_heads // parallel.world, config.o_groups // parallel.world
    h0, g0 = parallel.rank * heads, parallel.rank * groups
    dim, rank = config.head_dim, config.o_lora_rank
    device = attn.wq_b.weight.device
    with torch.device(device):
        attn.wq_b = nn.Linear(config.q_lora_rank, heads * dim, bias=False)
        attn.attn_sink = nn.Parameter(torch.zeros(heads, dtype=torch.float32))
        attn.wo_a = nn.Linear(config.num_attention_heads * dim // config.o_groups, groups * rank, bias=False)
        attn.wo_b = nn.Linear(groups * rank, config.hidden_size, bias=False)
    attn.num_heads, attn.num_groups = heads, groups
    attn.reduce = parallel.all_reduce
    return {"wq_b.weight": (0, h0 * dim, (h0 + heads) * dim), "attn_sink": (0, h0, h0 + heads),
            "wo_a.weight": (0, g0 * rank, (g0 + groups) * rank), "wo_b.weight": (1, g0 * rank, (g0 + groups) * rank)}


def shard_stored(stored: dict, model: nn.Module, narrow: dict[str, NARROW]) -> dict:
    """The checkpoint map (weights.scan) reduced to what this rank reads: other ranks' experts dropped,
    the narrowed tensors given their sliced shape (match() then checks them against the shards)."""
    keep = set(model.state_dict())
    out = {}
    for name, item in stored.items():
        if is_routed_expert(name) and name not in keep:
            continue  # another rank's expert: never read
        if name in narrow:
            dim, start, end = narrow[name]
            shape = list(item.shape)
            if dim >= len(shape) or end > shape[dim]:
                out[name] = item  # let match() report the mis-shaped tensor
                continue
            whole = shape[dim]
            shape[dim] = end - start
            item = replace(item, shape=tuple(shape), narrow=(dim, start, end),
                           nbytes=item.nbytes * (end - start) // max(whole, 1))
        out[name] = item
    return out


def local_parameter_count(config: V4Config, parallel: Parallel | None, with_mtp: bool = False) -> int:
    """The number of parameter elements one rank holds (for tests and the benchmark's report)."""
    from .v4 import Transformer

    with torch.device("meta"):
        model = Transformer(config, with_mtp=with_mtp)
    if parallel is not None:
        shard_model(model, parallel)
    return sum(p.numel() for p in model.parameters())
