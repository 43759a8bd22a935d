"""What a driven engine's driver (parallel_driver.py) and its workers (parallel_follower.py) say to each
other, and how a decode state the driver changed on its own reaches the workers.

The driver sends each engine call that runs collectives as a small message over a pipe (`Call`: the
method, its token ids, states named by `StateRef`); each worker replays it on its shard, so the model
code stays SPMD and every rank runs the same collectives in the same order. Nothing else crosses the
pipes: sampling, detokenizing, the prefix-state store and the user stay with the driver.

A decode state is the same on every rank (parallel.py: one KV vector per token, replicated), and every
replayed call changes it alike. The driver also changes states on its own, outside any call: the runner
rewinds to a mark, the prefix-state store restores a snapshot. So before a call that reads a state, the
driver compares its counters (`counters`) with those recorded after the last call; when they differ it
sends `Sync` and broadcasts what changed (`changed_parts`): the small per-point tensors (rings,
partial windows, the MTP pending streams) and the compressed entries past what the worker
holds. Entries are append-only, and what changes a state out of band either rewinds it (lowering its
counts: no entry is sent) or fills a fresh one (every entry is sent), so the entries a worker holds
below both counts are the driver's.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .state import DecodeState

ENGINE = "engine"  # the target of engine calls; decoders are named by `decoder_key`
# Engine and decoder methods a worker replays: those that run the model (collectives) or change what
# a later one reads. Anything else the driver does alone.
ENGINE_CALLS = frozenset({"forward", "prefill", "draft", "static_decoder", "draft_decoder", "state_decoder"})
DECODER_MAKERS = frozenset({"static_decoder", "draft_decoder", "state_decoder"})  # engine calls that return one
DECODER_CALLS = frozenset({"grow", "load_row", "store_row", "step", "start", "first_drafts", "settle", "verify",
                           "set_sampling"})
ALIGN = 16  # bytes: every part of a packed broadcast starts aligned, so it can be viewed as its dtype

Counters = tuple  # counters(state): what a replayed call or an out-of-band change moves


class ParallelError(RuntimeError):
    """A rank of a driven engine failed, died or fell out of step: the engine cannot go on. The message
    says which rank and why."""


@dataclass(frozen=True, slots=True)
class StateRef:
    """A decode state in a message, by the driver's `DecodeState.id`."""

    key: str


@dataclass(frozen=True, slots=True)
class NewState:
    """Make a state, as `Engine.new_state(max_tokens, draft)`, known as `key` from now on."""

    key: str
    max_tokens: int | None
    draft: bool


@dataclass(frozen=True, slots=True)
class Call:
    """Replay `target.method(*args, **kwargs)` (target: ENGINE or a decoder key)."""

    target: str
    method: str
    args: tuple
    kwargs: dict


@dataclass(frozen=True, slots=True)
class Sync:
    """State `key` now has `counters`; the parts that changed follow as one broadcast."""

    key: str
    counters: Counters


@dataclass(frozen=True, slots=True)
class Free:
    """The driver dropped these states: drop them too."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Stop:
    """The driver is closing: leave the loop and exit."""


def decoder_key(decoder: object) -> str:
    """A decoder's name on every rank: the engine keeps one decoder per kind and batch bucket."""
    return f"{type(decoder).__name__}:{decoder.batch}"  # type: ignore[attr-defined]


def encode(value: Any) -> Any:
    """`value` as a message carries it: states by reference, tensors on the CPU, containers element-wise."""
    if isinstance(value, DecodeState):
        return StateRef(value.id)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(encode(v) for v in value)
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def states_in(values: tuple | list | dict) -> list[DecodeState]:
    """The decode states among a call's arguments (top level, as the engine's methods take them)."""
    items = values.values() if isinstance(values, dict) else values
    return [v for v in items if isinstance(v, DecodeState)]


# ------------------------------------------------------------------------------ state sync

def counters(state: DecodeState) -> Counters:
    """What a call or an out-of-band change (rewind, restore) moves: the token count (every layer's
    counts follow from it, state.py), the MTP pending streams' shape and dtype, and the Engram layers'
    counts. Equal counters mean equal states (module docstring)."""
    pending = state.mtp_pending
    engram = tuple(layer.engram.num_tokens for layer in (*state.layers, *state.mtp_layers) if layer.engram is not None)
    return (state.num_tokens, None if pending is None else (tuple(pending.shape), str(pending.dtype)), engram)


def apply_counters(state: DecodeState, new: Counters) -> None:
    """Set `state`'s counts to `new` (a worker, before the parts arrive); a fresh MTP pending tensor
    of the announced shape receives the driver's."""
    num_tokens, pending, engram = new
    state.num_tokens = num_tokens
    if pending is None:
        state.mtp_pending = None
    else:
        shape, dtype = pending
        device = state.layers[0].kv.device
        state.mtp_pending = torch.empty(shape, dtype=getattr(torch, dtype.removeprefix("torch.")), device=device)
    for layer, count in zip([layer for layer in (*state.layers, *state.mtp_layers) if layer.engram is not None],
                            engram):
        layer.engram.num_tokens = count  # type: ignore[union-attr]


def _layer_tokens(state: DecodeState, count: Counters) -> list[int]:
    """The tokens each layer (main, then MTP) has seen under `count`: MTP layers run one behind."""
    num_tokens, pending, _ = count
    mtp = num_tokens - 1 if pending is not None else 0
    return [num_tokens] * len(state.layers) + [mtp] * len(state.mtp_layers)


def changed_parts(state: DecodeState, old: Counters, new: Counters) -> list[torch.Tensor]:
    """The tensors of `state` to broadcast for a sync from `old` counters (what the worker holds) to
    `new` (the driver's), the same list on every rank: each layer's ring and partial windows, Engram
    context, the MTP pending streams, and the entries from min(old, new) count on."""
    parts = [] if state.mtp_pending is None else [state.mtp_pending]
    layers = (*state.layers, *state.mtp_layers)
    for layer, was, now in zip(layers, _layer_tokens(state, old), _layer_tokens(state, new)):
        parts.append(layer.kv[:, layer.entries :])
        for comp, keys, scales in ((layer.compressor, layer.kv, None),
                                   (layer.indexer, layer.index_keys, layer.index_scales)):
            if comp is None:
                continue
            start, end = min(was, now) // comp.rate, now // comp.rate
            parts.append(keys[:, start:end])  # type: ignore[index]
            if scales is not None:
                parts.append(scales[:, start:end])
            parts += [comp.partial_kv, comp.partial_gate]
        if layer.engram is not None:
            parts += [layer.engram.tokens, layer.engram.conv]
    return parts


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def share_parts(parts: list[torch.Tensor], group: object, rank: int) -> None:
    """Broadcast `parts` from rank 0 into the same parts on the other ranks, packed as bytes into one
    buffer (one collective, whatever the dtypes: FP8 entries included)."""
    sizes = [p.numel() * p.element_size() for p in parts]
    total = sum(_aligned(n) for n in sizes)
    if not total:
        return
    flat = torch.empty(total, dtype=torch.uint8, device=parts[0].device)
    offsets, at = [], 0
    for size in sizes:
        offsets.append(at)
        at += _aligned(size)
    if rank == 0:
        for part, offset, size in zip(parts, offsets, sizes):
            if size:
                flat[offset: offset + size].copy_(part.contiguous().reshape(-1).view(torch.uint8))
    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([flat], options).wait()  # type: ignore[attr-defined]
    if rank != 0:
        for part, offset, size in zip(parts, offsets, sizes):
            if size:
                part.copy_(flat[offset: offset + size].view(part.dtype).reshape(part.shape))


# ------------------------------------------------------------------------------ the group

def make_group(store: dist.Store, rank: int, world: int, cuda: bool, timeout_s: float) -> object:
    """The ranks' process group, made directly on `store` rather than as torch's default group, so
    nothing process-wide changes (a process may hold a driven engine and whole ones side by side):
    NCCL on CUDA, gloo over the loopback on CPU. Every collective gives up after `timeout_s`."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if cuda:
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, options)
    options = dist.ProcessGroupGloo._Options()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    options._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, world, options)
