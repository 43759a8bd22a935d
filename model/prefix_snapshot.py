"""A decode state as the prefix-state store keeps it: the tensors of a snapshot at one point (everything
but the compressed entries of whole chunks), the entries of one whole chunk, and the restore of a fresh
state from a snapshot and its chunks. Split from `prefix_store` so each file keeps one job."""

from __future__ import annotations

import torch

from .state import DecodeState, LayerState


def _layer_groups(state: DecodeState) -> list[tuple[str, LayerState, int]]:
    """Each layer's name, state and the tokens it has seen (MTP layers run one behind)."""
    return [(f"L{i}", layer, state.num_tokens) for i, layer in enumerate(state.layers)] + \
           [(f"M{i}", layer, state.mtp_tokens) for i, layer in enumerate(state.mtp_layers)]


def _entry_tensors(name: str, layer: LayerState) -> list[tuple[str, torch.Tensor, int]]:
    """The layer's append-only tensors `[B, capacity, ...]` by name, with the tokens one entry covers:
    the compressed K=V entries (`.c`), and for CSA the indexer's keys (`.x`) and their FP8 scales."""
    if layer.compressor is None:
        return []
    rate = layer.compressor.rate
    found = [(f"{name}.c", layer.compressor.entries, rate)]
    if layer.indexer is not None:
        found.append((f"{name}.x", layer.indexer.entries, rate))
        if layer.indexer.entry_scale is not None:
            found.append((f"{name}.x.scale", layer.indexer.entry_scale, rate))
    return found


def _partial_tensors(name: str, layer: LayerState) -> list[tuple[str, torch.Tensor]]:
    """The layer's small per-point tensors: the window's ring and each compressor's partial windows
    (scratch slot and row left out)."""
    batch = layer.kv.shape[0]
    found = [(f"{name}.ring", layer.kv[:, layer.entries : layer.entries + layer.ring])]
    for tag, comp in (("c", layer.compressor), ("x", layer.indexer)):
        if comp is not None:
            found += [(f"{name}.{tag}.partial_kv", comp.partial_kv[:batch]),
                      (f"{name}.{tag}.partial_gate", comp.partial_gate[:batch])]
    return found


def snapshot_tensors(state: DecodeState, last_logits: torch.Tensor, chunk_tokens: int
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, counters) of everything at this point except the entries of whole chunks."""
    whole_chunks = state.num_tokens // chunk_tokens
    tensors: dict[str, torch.Tensor] = {"last_logits": last_logits.float().reshape(-1)}
    counters: dict[str, object] = {"num_tokens": state.num_tokens, "whole_chunks": whole_chunks}
    if state.mtp_pending is not None:
        tensors["mtp_pending"] = state.mtp_pending
    for name, layer, seen in _layer_groups(state):
        tensors.update(_partial_tensors(name, layer))
        for key, entries, rate in _entry_tensors(name, layer):
            tensors[f"{key}.tail"] = entries[:, whole_chunks * (chunk_tokens // rate) : seen // rate]
        if layer.engram is not None:
            tensors[f"{name}.e.tokens"], tensors[f"{name}.e.conv"] = layer.engram.tokens, layer.engram.conv
            counters[f"{name}.e"] = layer.engram.num_tokens
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, counters


def chunk_tensors(state: DecodeState, chunk: int, chunk_tokens: int) -> dict[str, torch.Tensor]:
    """The compressed entries of whole chunk `chunk` (tokens chunk*C .. (chunk+1)*C), every layer."""
    tensors = {}
    for name, layer, _ in _layer_groups(state):
        for key, entries, rate in _entry_tensors(name, layer):
            per = chunk_tokens // rate
            tensors[key] = entries[:, chunk * per : (chunk + 1) * per]
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _fill(target: torch.Tensor, source: torch.Tensor) -> None:
    """`target.copy_(source)`, refusing another dtype or shape: a copy would convert FP8 bytes as
    numbers, or broadcast a tensor of another layout."""
    if source.dtype != target.dtype or source.shape != target.shape:
        raise ValueError(f"stored {source.dtype} {tuple(source.shape)} where the state holds {target.dtype} "
                         f"{tuple(target.shape)}")
    target.copy_(source)


def restore(state: DecodeState, snapshot: dict[str, torch.Tensor], counters: dict,
            chunks: list[dict[str, torch.Tensor]], chunk_tokens: int) -> torch.Tensor:
    """Fill a fresh `state` from a snapshot and its chunks; returns the last logits."""
    device = state.layers[0].kv.device
    state.num_tokens = int(counters["num_tokens"])
    for name, layer, _ in _layer_groups(state):
        for key, target in _partial_tensors(name, layer):
            _fill(target, snapshot[key])
        for key, entries, rate in _entry_tensors(name, layer):
            per = chunk_tokens // rate
            for index, chunk in enumerate(chunks):
                _fill(entries[:, index * per : (index + 1) * per], chunk[key])
            tail = snapshot[f"{key}.tail"]
            start = len(chunks) * per
            _fill(entries[:, start : start + tail.shape[1]], tail)
        if layer.engram is not None:
            layer.engram.tokens.copy_(snapshot[f"{name}.e.tokens"])
            layer.engram.conv.copy_(snapshot[f"{name}.e.conv"])
            layer.engram.num_tokens = int(counters[f"{name}.e"])
    state.mtp_pending = snapshot["mtp_pending"].to(device) if "mtp_pending" in snapshot else None
    return snapshot["last_logits"].to(device, copy=True)  # never hand out the memory tier's tensor
