"""Expert offload: a MoE model larger than the GPU still runs. Each MoE's routed experts live in host
memory (pinned, so copies are DMA at PCIe speed; or memory-mapped from the checkpoint when host memory
is short, model/offload_plan.py); the GPU keeps the attention, shared experts, embedding and head, plus
a cache of `slots` routed experts per layer: the hot ones, by use counts with decay (`OffloadStats`).
KTransformers is the anchor for the split. A missing expert is copied, so the grouped FP4/FP8 kernel
runs unchanged; or, when `ExpertCosts` (the copy against the CPU's tiled GEMV, model/cpu_experts.py)
say the CPU is cheaper for its few tokens and it is no hotter than the coldest resident expert, it is
computed on the CPU from its host copy while the GPU runs the rest (in graphed steps too).

Per MoE call the routing is read on the host (one sync: the price of deciding what to copy):
- every expert the call needs fits in the cache (decode, short chunks): the missing ones are copied on
  a side stream into the slots of the coldest experts not needed now, the shared expert runs on the
  compute stream meanwhile, and the grouped kernel runs once on the cache with ids mapped to slots;
- more experts than slots (prefill): the needed experts stream through the two halves of the cache,
  the copy of group g+1 overlapping the grouped kernel on group g, and each (token, slot) pair's output
  lands in its own row before the per-token sum over slots: the same result, in the same order, as
  running all experts at once.
On the CPU (tests) "host" and "cache" are both host memory and copies are plain copies: the same logic,
tested without a GPU. One CUDA graph cannot hold the host sync, so offloaded decoding is a piecewise
graph (model/piecewise_graph.py): a piece per layer, cut where the host reads the routing.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .cpu_experts import ExpertCosts, measure_costs, pair_inputs, weighted_pairs
from .moe import MoE
from .piecewise_graph import PiecewiseGraph

RunExperts = Callable[[Tensor, Tensor, Tensor, tuple[Tensor, ...]], Tensor]
Router = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # moe.Gate: (x [N, H], token ids [N]) -> (weights, ids)
HostExperts = tuple[Tensor | Sequence[Tensor], ...]  # per projection leaf: a stack [E, ...] or E tensors


class OffloadError(ValueError):
    """An offload request the model cannot take (bad slot count, expert-parallel MoE)."""


HEAT_HALF_LIFE = 64  # MoE calls (decode tokens) after which an expert's use counts half as much
# Prefetch copies only while this share of the layer before's guesses is then used (decayed like heat):
# a wrong guess costs a copy and may evict a useful expert (H100, random weights: ~25% right, -7-11%).
PREFETCH_MIN_PRECISION, PREFETCH_WARMUP = 0.5, 8.0  # the latter: guesses counted before it decides


@dataclass(slots=True)
class OffloadStats:
    """Counters since the cache was made: expert lookups that hit / missed the GPU cache, bytes copied
    host -> GPU, MoE calls, the calls that streamed (needed more experts than slots), and how often the
    router chose each expert (`selections[e]`: (token, expert) pairs, all calls)."""

    hits: int = 0
    misses: int = 0
    bytes_copied: int = 0
    calls: int = 0
    streamed_calls: int = 0
    cpu_experts: int = 0  # misses computed on the CPU from the host copy instead of copied (cpu_experts.py)
    prefetched: int = 0  # experts copied ahead of the call, predicted by the layer before (`ExpertCache.next`)
    prefetch_hits: int = 0  # of those, the ones the call then needed (each also counts as a hit)
    selections: list[int] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


class ExpertCache:
    """One MoE's routed experts: `host` holds, for w1, w3, w2 (or each with its scale), every expert's
    tensor in host memory (a stack `[E, ...]`, or a list of E tensors: views of the memory-mapped
    checkpoint) and `slots` of them are resident on `device`, in stacks `[slots, ...]` the grouped
    kernel reads."""

    def __init__(self, host: HostExperts, slots: int, device: torch.device | str, fmt: str | None = None,
                 limit: float = math.inf) -> None:
        num_experts = len(host[0])
        if slots < 2:
            raise OffloadError(f"expert offload needs at least 2 GPU slots per layer, got {slots}")
        self.host, self.num_experts, self.slots = host, num_experts, min(slots, num_experts)
        self.device = torch.device(device)
        self.cache = tuple(torch.empty((self.slots, *t[0].shape), dtype=t[0].dtype, device=self.device) for t in host)
        self.expert_bytes = sum(t[0].numel() * t[0].element_size() for t in host)
        self._slot = [-1] * num_experts  # host table: expert -> slot (a list: a tensor write costs ~2 us)
        self.expert_in = [-1] * self.slots
        # Which experts stay: decayed use counts (`heat`), the coldest resident expert not needed now
        # evicted first, ties by the least recently used. A burst of one-off experts (a prompt's odd
        # tokens) then passes through without pushing out the layer's steady favourites, as LRU would.
        self.heat = torch.zeros(num_experts, dtype=torch.float64)
        self.decay = 0.5 ** (1 / HEAT_HALF_LIFE)
        self.last_used = [0] * num_experts
        self.clock = 0
        # A miss may be computed on the CPU instead of copied (cpu_experts.py) when `costs` say it is
        # cheaper; None: always copied. `fmt` and `limit` are the MoE's, for that computation.
        self.costs: ExpertCosts | None = None
        self.fmt, self.limit = fmt, limit
        # The next MoE layer's cache and router (linked by offload_experts): its likely experts are copied
        # while this layer computes (`_predict`); that cache waits for them (`pending`) and counts its hits.
        self.next: tuple[ExpertCache, Router] | None = None
        self.prefetched: set[int] = set()
        # What the layer before predicted for the next call, copied or not, and how often it was right.
        self.predicted: list[int] | None = None
        self.predictions = self.predictions_right = 0.0
        self.pending: torch.cuda.Event | None = None
        cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self.stats = OffloadStats(selections=[0] * num_experts)
        self.capturing: PiecewiseGraph | None = None  # set by PiecewiseGraph.capture while it runs

    def routed(self, x: Tensor, weights: Tensor, ids: Tensor, run: RunExperts, meanwhile: Callable[[], Tensor],
               token_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(the routed experts' weighted sum `[N, hidden]`, `meanwhile()`): `run(x, weights, slot_ids,
        cache stacks)` is the MoE's grouped kernel call; `meanwhile` (the shared expert) runs on the
        compute stream while the first copies are in flight. `token_ids` `[N]`: for a hash-routed next
        layer's prediction."""
        capture = self.capturing
        if capture is not None and torch.cuda.is_current_stream_capturing():  # counted at each replay instead
            return self._routed_in_graph(x, weights, ids, run, meanwhile, capture, token_ids)
        self.stats.calls += 1
        predicted = self._predict(x, ids, token_ids)
        both = (ids if predicted is None else torch.cat([ids, predicted])).cpu()  # the one sync: what to fetch
        host_ids = both[: ids.shape[0]]
        needed, counts = self._observe(host_ids)
        if len(needed) <= self.slots:
            on_cpu = self._cpu_cheaper(needed, counts)
            ready = self._fetch([e for e in needed if e not in on_cpu])
            self._prefetch_next(both[ids.shape[0]:])
            if on_cpu:
                return self._routed_split(x, weights, host_ids, on_cpu, ready, run, meanwhile)
            other = meanwhile()
            self._wait(ready)
            slot_ids = self.slots_of(host_ids).to(self.device, non_blocking=True)
            return run(x, weights, slot_ids, self.cache), other
        return self._stream(x, weights, host_ids, needed, run, meanwhile)

    def _routed_in_graph(self, x: Tensor, weights: Tensor, ids: Tensor, run: RunExperts, meanwhile: Callable[[], Tensor],
                         capture: PiecewiseGraph, token_ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """Under a piecewise capture (model/piecewise_graph.py): the shared expert ends this piece;
        at replay the host then fetches the experts `ids` name and writes their slots into a buffer
        the next piece's grouped kernel reads. A decode batch needs at most N*k experts: they must fit.
        With `costs`, misses the CPU serves better are computed there while the others' copies run: their
        pairs get NO_EXPERT slots (the kernel skips them) and their weighted sum lands in a buffer the
        next piece adds."""
        if ids.numel() > self.slots:
            raise OffloadError(f"a graphed decode step may need {ids.numel()} experts per layer but the cache "
                               f"holds {self.slots}: use more slots or decode without graphs")
        predicted = self._predict(x, ids, token_ids)
        other = meanwhile()
        slot_ids = torch.zeros_like(ids)
        # The CPU's buffer (a fill and an add per layer and step) only where a miss could go there: the
        # CPU's cost only grows with tokens, so one it cannot win at one token it never wins.
        on_cpu_possible = self.costs is not None and self.costs.cpu_faster(1)
        from_cpu = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if on_cpu_possible else None

        def fetch() -> None:
            self.stats.calls += 1
            host_ids = ids.cpu()
            needed, counts = self._observe(host_ids)
            on_cpu = self._cpu_cheaper(needed, counts) if from_cpu is not None else []
            ready = self._fetch([e for e in needed if e not in on_cpu])
            if predicted is not None:
                self._prefetch_next(predicted.cpu())
            if on_cpu:  # else the zeros this piece wrote stand: no copy on the hot path
                from_cpu.copy_(self._cpu_sums(x, weights, host_ids, on_cpu))
            self._wait(ready)
            slot_ids.copy_(self.slots_of(host_ids))  # an expert on the CPU: -1, NO_EXPERT

        capture.split(fetch)
        routed = run(x, weights, slot_ids, self.cache)
        if from_cpu is not None:
            routed = (routed.float() + from_cpu).to(routed.dtype)
        return routed, other

    # ------------------------------------------------------------------ the cache

    def _observe(self, host_ids: Tensor) -> tuple[list[int], Tensor]:
        """Count a call's routing (`host_ids` [N, k]): each expert's heat decays by one call and grows
        by its (token, expert) pairs. Returns the experts the call needs, ascending, and the pairs per
        expert `[E]`."""
        counts = torch.bincount(host_ids.reshape(-1), minlength=self.num_experts)
        self.heat.mul_(self.decay).add_(counts)
        self.clock += 1
        needed = counts.nonzero().squeeze(1).tolist()
        per_expert = counts.tolist()
        if self.predicted is not None:
            self.predictions = self.decay * self.predictions + len(self.predicted)
            self.predictions_right = self.decay * self.predictions_right + sum(1 for e in self.predicted if per_expert[e])
            self.predicted = None
        for expert in needed:
            self.stats.selections[expert] += per_expert[expert]
            self.last_used[expert] = self.clock
        return needed, counts

    def coldest(self, keep: set[int]) -> list[int]:
        """The resident experts outside `keep`, coldest first: the order they are evicted in."""
        resident = [e for e in self.expert_in if e >= 0 and e not in keep]
        heat = self.heat.tolist()  # one conversion, not one tensor read per comparison
        return sorted(resident, key=lambda e: (heat[e], self.last_used[e], e))

    def _fetch(self, needed: list[int]) -> torch.cuda.Event | None:
        """Make every expert of `needed` resident (the coldest others evicted); the copies are issued
        on the side stream, returned as the event that marks them done (after any prefetch's)."""
        self._settle_prefetch(needed)
        missing = [e for e in needed if self._slot[e] < 0]
        self.stats.hits += len(needed) - len(missing)
        self.stats.misses += len(missing)
        if not missing:
            return None
        return self._copy(self._make_room(missing, set(needed)))

    def _make_room(self, missing: list[int], keep: set[int]) -> list[tuple[int, int]]:
        """A slot for each of `missing`: free ones first, then those of the coldest experts outside `keep`
        (forgotten now). Returns the (expert, slot) moves."""
        free = [s for s, e in enumerate(self.expert_in) if e < 0]
        victims = iter(self.coldest(keep) if len(missing) > len(free) else ())
        slots = []
        for _ in missing:
            if free:
                slots.append(free.pop(0))
                continue
            victim = next(victims)
            slots.append(self._slot[victim])
            self._forget(victim)
        return list(zip(missing, slots))

    # ------------------------------------------------------------------ prefetch for the next layer

    def _predict(self, x: Tensor, ids: Tensor, token_ids: Tensor | None) -> Tensor | None:
        """The next MoE layer's likely routing `[N, k]` on the device: its router applied to this layer's
        input. The residual stream changes little from one layer to the next (Pre-gated MoE, Hwang et
        al. 2024), so this names per token what use counts cannot (the hot experts are resident anyway);
        a hash-routed next layer is predicted exactly (its table needs only the token ids). None without
        a next layer, or for a call the next cache could not hold (a prefill streams anyway)."""
        if self.next is None or ids.numel() > self.next[0].slots:
            return None
        router = self.next[1]
        if getattr(router, "hashed", False) and token_ids is None:
            return None
        return router(x, token_ids)[1].to(ids.dtype)

    def _prefetch_next(self, predicted: Tensor) -> None:
        if self.next is not None and predicted.numel():
            following = self.next[0]
            following.predicted = torch.unique(predicted).tolist()
            if following.prefetch_pays():
                following.prefetch(following.predicted)

    def prefetch_pays(self) -> bool:
        """Whether the predictions for this cache have been right often enough to copy on them; they
        are scored whether copied or not, so a layer whose guesses improve starts prefetching again."""
        if self.predictions < PREFETCH_WARMUP:
            return True
        return self.predictions_right >= PREFETCH_MIN_PRECISION * self.predictions

    def prefetch(self, experts: list[int]) -> None:
        """Start copying `experts` (what the next call will likely need) into the slots of the coldest
        others, on the side stream; the next call waits for the copies and counts the ones it uses."""
        keep = set(experts)
        room = sum(1 for e in self.expert_in if e < 0 or e not in keep)  # free, or evictable for these
        missing = [e for e in experts if self._slot[e] < 0][:room]
        if not missing:
            return
        self.pending = self._copy(self._make_room(missing, keep))
        self.prefetched.update(missing)
        self.stats.prefetched += len(missing)

    def _settle_prefetch(self, needed: list[int]) -> None:
        """Before a call uses its slots: wait for the prefetch copies and count those it needs."""
        self._wait(self.pending)
        self.pending = None
        self.stats.prefetch_hits += sum(1 for e in needed if e in self.prefetched and self._slot[e] >= 0)
        self.prefetched.clear()

    def _copy(self, moves: list[tuple[int, int]], after: torch.cuda.Event | None = None) -> torch.cuda.Event | None:
        """Copy expert e's tensors into slot s for each (e, s) on the side stream, which first waits for
        the compute stream's work so far (or only `after`, when given) so no slot is overwritten
        while a kernel still reads it. The table is updated at once: the event says when it is true."""
        stream = self.copy_stream
        if stream is not None:
            if after is None:
                stream.wait_stream(torch.cuda.current_stream(self.device))
            else:
                stream.wait_event(after)
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for expert, slot in moves:
                for cached, held in zip(self.cache, self.host):
                    cached[slot].copy_(held[expert], non_blocking=True)
                self._remember(expert, slot)
        self.stats.bytes_copied += len(moves) * self.expert_bytes
        if stream is None:
            return None
        done = torch.cuda.Event()
        done.record(stream)
        return done

    def _wait(self, event: torch.cuda.Event | None) -> None:
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    slot_of = property(lambda self: torch.tensor(self._slot, dtype=torch.long), doc="expert -> slot `[E]` (-1: none)")

    def slots_of(self, host_ids: Tensor) -> Tensor:
        """The slot of each expert id in `host_ids` (host, any shape; -1: not on the GPU), as int64."""
        slots = [self._slot[e] for e in host_ids.reshape(-1).tolist()]
        return torch.tensor(slots, dtype=torch.long).view(host_ids.shape)

    def _remember(self, expert: int, slot: int) -> None:
        if self.expert_in[slot] >= 0:
            self._forget(self.expert_in[slot])
        self._slot[expert], self.expert_in[slot] = slot, expert

    def _forget(self, expert: int) -> None:
        self.expert_in[self._slot[expert]], self._slot[expert] = -1, -1

    # ------------------------------------------------------------------ misses computed on the CPU

    def _cpu_cheaper(self, needed: list[int], counts: Tensor) -> list[int]:
        """The missing experts of `needed` to compute on the CPU: those `costs` say are cheaper there for
        their token count, unless a free slot waits or the expert is hotter than the coldest resident one
        it would replace (then it is copied: re-placed, as later calls will want it). Decided in the
        order `_fetch` fills slots, so the copies it then makes are exactly the others."""
        costs = self.costs
        heat = self.heat.tolist()
        missing = sorted((e for e in needed if self._slot[e] < 0), key=lambda e: (-heat[e], e))
        if costs is None or not missing:
            return []
        free = sum(1 for e in self.expert_in if e < 0)
        evictable = self.coldest(set(needed))
        on_cpu = []
        for expert in missing:
            if free:
                free -= 1
            elif heat[expert] > heat[evictable[0]] or not costs.cpu_faster(int(counts[expert])):
                evictable.pop(0)
            else:
                on_cpu.append(expert)
        return sorted(on_cpu)

    def _routed_split(self, x: Tensor, weights: Tensor, host_ids: Tensor, on_cpu: list[int],
                      ready: torch.cuda.Event | None, run: RunExperts,
                      meanwhile: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
        """Experts `on_cpu` computed on the CPU from their host copies while the GPU runs the shared
        expert and the grouped kernel on the others (fetched: `ready`); each (token, slot) pair's output
        lands in its own row before the per-token sum over slots, as in `_stream`. The inputs the CPU
        needs are read before any compute is queued (copies run on the side stream), so reading them
        waits for nothing new."""
        num_tokens, k = host_ids.shape
        flat = host_ids.reshape(-1)
        on_host = torch.isin(flat, torch.tensor(on_cpu))
        cpu_pairs, gpu_pairs = on_host.nonzero().squeeze(1), (~on_host).nonzero().squeeze(1)
        host_x, host_weights = pair_inputs(x, weights, cpu_pairs, k)
        other = meanwhile()
        out = torch.zeros(num_tokens * k, x.shape[-1], dtype=torch.float32, device=x.device)
        self._wait(ready)
        if gpu_pairs.numel():
            here = gpu_pairs.to(x.device)
            slot_ids = self.slots_of(flat[gpu_pairs])[:, None].to(x.device)
            out[here] = run(x[here // k], weights.reshape(-1)[here, None], slot_ids, self.cache).float()
        out[cpu_pairs.to(x.device)] = self._cpu_pairs(host_x, host_weights, flat[cpu_pairs], on_cpu).to(x.device)
        return out.view(num_tokens, k, -1).sum(1).to(x.dtype), other

    def _cpu_sums(self, x: Tensor, weights: Tensor, host_ids: Tensor, on_cpu: list[int]) -> Tensor:
        """Per token `[N, hidden]` float32 (host): the weighted sum of its pairs whose expert is `on_cpu`
        (zero rows for a token with none)."""
        num_tokens, k = host_ids.shape
        out = torch.zeros(num_tokens, x.shape[-1], dtype=torch.float32)
        flat = host_ids.reshape(-1)
        cpu_pairs = torch.isin(flat, torch.tensor(on_cpu)).nonzero().squeeze(1)
        host_x, host_weights = pair_inputs(x, weights, cpu_pairs, k)
        return out.index_add_(0, cpu_pairs // k, self._cpu_pairs(host_x, host_weights, flat[cpu_pairs], on_cpu))

    def _cpu_pairs(self, host_x: Tensor, host_weights: Tensor, pair_experts: Tensor, on_cpu: list[int]) -> Tensor:
        """`weighted_pairs` on this cache's host experts, counted as misses served on the CPU."""
        self.stats.cpu_experts += len(on_cpu)
        self.stats.misses += len(on_cpu)
        return weighted_pairs(self.host, self.fmt, self.limit, host_x, host_weights, pair_experts, on_cpu)

    # ------------------------------------------------------------------ more experts than slots

    def _stream(self, x: Tensor, weights: Tensor, host_ids: Tensor, needed: list[int], run: RunExperts,
                meanwhile: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
        """The needed experts in groups of half the cache, alternating halves: group g+1 is copied while
        group g computes. Resident experts are copied again only if their slot is in the way (simple,
        and prefill touches every expert anyway). The hottest go last, so they are what stays."""
        self.stats.streamed_calls += 1
        self._settle_prefetch([])
        self.stats.misses += len(needed)
        heat = self.heat.tolist()
        needed = sorted(needed, key=lambda e: (heat[e], e))
        half = self.slots // 2
        groups = [needed[i : i + half] for i in range(0, len(needed), half)]
        num_tokens, k = host_ids.shape
        flat_ids = host_ids.reshape(-1)
        out = torch.zeros(num_tokens * k, x.shape[-1], dtype=torch.float32, device=x.device)
        copied: list[torch.cuda.Event | None] = [None] * len(groups)
        for g in range(min(2, len(groups))):  # both halves at once: they only wait for earlier work
            copied[g] = self._copy(self._placement(groups[g], g * half))
        other = meanwhile()
        for g, group in enumerate(groups):
            self._wait(copied[g])
            pairs = torch.isin(flat_ids, torch.tensor(group)).nonzero().squeeze(1)
            slot_ids = self.slots_of(flat_ids[pairs])[:, None].to(x.device)
            pairs_here = pairs.to(x.device)
            out[pairs_here] = run(x[pairs_here // k], weights.reshape(-1)[pairs_here, None], slot_ids,
                                  self.cache).float()
            if g + 2 < len(groups):  # group g+2 reuses this half once this group's kernels are done
                computed = None
                if self.copy_stream is not None:
                    computed = torch.cuda.Event()
                    computed.record(torch.cuda.current_stream(self.device))
                copied[g + 2] = self._copy(self._placement(groups[g + 2], (g % 2) * half), computed)
        return out.view(num_tokens, k, -1).sum(1).to(x.dtype), other

    def _placement(self, group: list[int], base: int) -> list[tuple[int, int]]:
        """Group members into slots base, base+1, ... (the group's half of the cache)."""
        for slot in range(base, base + len(group)):
            if self.expert_in[slot] >= 0:
                self._forget(self.expert_in[slot])
        for expert in group:
            if self._slot[expert] >= 0:
                self._forget(expert)
        return [(expert, base + i) for i, expert in enumerate(group)]


def expert_caches(model: torch.nn.Module) -> list[ExpertCache]:
    """The expert caches of `model`'s offloaded MoEs, in module order: the cut points of its piecewise
    decode graph (model/piecewise_graph.py)."""
    return [m.strategy.offload for m in model.modules()
            if isinstance(m, MoE) and isinstance(m.strategy.offload, ExpertCache)]


def has_offload(model: torch.nn.Module) -> bool:
    """Whether any MoE of `model` runs its routed experts from host memory."""
    return any(isinstance(m, MoE) and m.strategy.offload is not None for m in model.modules())


def fewest_slots(model: torch.nn.Module) -> int | None:
    """The smallest expert cache of `model`'s offloaded MoEs (None: none); a graphed B-row step needs B x top-k."""
    return min((cache.slots for cache in expert_caches(model)), default=None)


def to_host(tensor: Tensor, pin: bool) -> Tensor:
    """A host copy of `tensor`, page-locked when `pin` (falls back to pageable memory if the OS
    refuses to lock more: slower copies, same results)."""
    if pin:
        try:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            return host.copy_(tensor)
        except RuntimeError:
            pass
    return tensor.to("cpu", copy=True)


def offload_experts(model: torch.nn.Module, slots: int, device: torch.device | str | None = None,
                    mapped: bool = False) -> list[ExpertCache]:
    """Move every MoE's routed experts of `model` to host memory and give each MoE a cache of `slots`
    experts on `device` (default: where the model's embedding is). The experts' parameters become
    views of the host stacks, so their GPU memory is freed and `state_dict` still names them.
    `mapped`: the experts already are host tensors the cache reads as they are (weights.py's memory
    maps of the checkpoint, `load_into(map_experts=True)`): nothing is stacked or copied.
    Each main layer's cache prefetches the next layer's likely experts (`ExpertCache.next`); on CUDA the
    caches get `ExpertCosts` measured now, so a miss may be computed on the CPU.
    Returns the caches (their `stats` say how the cache did)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pin = device.type == "cuda"
    caches, chain = [], []
    for name, moe in model.named_modules():
        if not isinstance(moe, MoE):
            continue
        if moe.strategy.shard is not None:
            raise OffloadError(f"{name}: expert offload and expert parallelism do not combine; use one")
        if mapped:
            host: HostExperts = tuple([getattr(getattr(expert, proj), leaf).data for expert in moe.experts]
                                      for proj in ("w1", "w3", "w2") for leaf in moe.strategy.leaves)
        else:
            stacks = moe.stacked_quantized() if moe.strategy.fmt is not None else moe.stacked_weights()
            host = tuple(to_host(t, pin) for t in stacks)
            moe.hold_stacks(host)
        cache = ExpertCache(host, slots, device, moe.strategy.fmt, moe.limit)
        moe.strategy = replace(moe.strategy, offload=cache)
        caches.append(cache)
        if name.startswith("layers."):  # the main layers in order (not the MTP block): each prefetches the next's
            chain.append((cache, moe.gate))
    for (cache, _), following in zip(chain, chain[1:]):
        cache.next = following
    if not caches:
        raise OffloadError("the model has no MoE layers to offload")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        first = caches[0]  # every layer's experts have one shape: measured once
        costs = measure_costs(first.host, first.cache, first.fmt, first.limit)
        for cache in caches:
            cache.costs = costs
    return caches
