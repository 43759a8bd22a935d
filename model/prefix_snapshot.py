"""A decode state as the prefix-state store keeps it: the tensors of a snapshot at one point (everything
but the compressed entries of whole chunks), the entries of one whole chunk, and the restore of a fresh
state from a snapshot and its chunks. Split from `prefix_store` so each file keeps one job."""

from __future__ import annotations

import torch

from .state import CompressorState, DecodeState, LayerState


def _layer_groups(state: DecodeState) -> list[tuple[str, LayerState]]:
    return [(f"L{i}", layer) for i, layer in enumerate(state.layers)] + \
           [(f"M{i}", layer) for i, layer in enumerate(state.mtp_layers)]


def _compressors(name: str, layer: LayerState) -> list[tuple[str, CompressorState]]:
    found = []
    if layer.compressor is not None:
        found.append((f"{name}.c", layer.compressor))
    if layer.indexer is not None:
        found.append((f"{name}.x", layer.indexer))
    return found


def _entries_per_chunk(compressor: CompressorState, chunk_tokens: int) -> int:
    return chunk_tokens // compressor.partial_kv.shape[1]  # partial_kv is [B, rate, width]


def snapshot_tensors(state: DecodeState, last_logits: torch.Tensor, chunk_tokens: int
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, counters) of everything at this point except the entries of whole chunks."""
    whole_chunks = state.num_tokens // chunk_tokens
    tensors: dict[str, torch.Tensor] = {"last_logits": last_logits.float().reshape(-1)}
    counters: dict[str, object] = {"num_tokens": state.num_tokens, "whole_chunks": whole_chunks}
    if state.mtp_pending is not None:
        tensors["mtp_pending"] = state.mtp_pending
    for name, layer in _layer_groups(state):
        tensors[f"{name}.window"] = layer.window
        counters[f"{name}.num_window"] = layer.num_window
        for cname, comp in _compressors(name, layer):
            start = whole_chunks * _entries_per_chunk(comp, chunk_tokens)
            tensors[f"{cname}.tail"] = comp.entries[:, start : comp.num_entries]
            if comp.entry_scale is not None:
                tensors[f"{cname}.tail_scale"] = comp.entry_scale[:, start : comp.num_entries]
            tensors[f"{cname}.partial_kv"], tensors[f"{cname}.partial_gate"] = comp.partial_kv, comp.partial_gate
            if comp.overlap_kv is not None:
                tensors[f"{cname}.overlap_kv"], tensors[f"{cname}.overlap_gate"] = comp.overlap_kv, comp.overlap_gate
            counters[cname] = [comp.num_entries, comp.num_partial, comp.has_overlap]
        if layer.engram is not None:
            tensors[f"{name}.e.tokens"], tensors[f"{name}.e.conv"] = layer.engram.tokens, layer.engram.conv
            counters[f"{name}.e"] = layer.engram.num_tokens
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, counters


def chunk_tensors(state: DecodeState, chunk: int, chunk_tokens: int) -> dict[str, torch.Tensor]:
    """The compressed entries of whole chunk `chunk` (tokens chunk*C .. (chunk+1)*C), every layer."""
    tensors = {}
    for name, layer in _layer_groups(state):
        for cname, comp in _compressors(name, layer):
            per = _entries_per_chunk(comp, chunk_tokens)
            tensors[cname] = comp.entries[:, chunk * per : (chunk + 1) * per]
            if comp.entry_scale is not None:
                tensors[f"{cname}.scale"] = comp.entry_scale[:, chunk * per : (chunk + 1) * per]
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _fill(target: torch.Tensor, source: torch.Tensor) -> None:
    """`target.copy_(source)`, refusing another dtype: a copy would convert FP8 bytes as numbers."""
    if source.dtype != target.dtype:
        raise ValueError(f"stored {source.dtype} where the state holds {target.dtype}")
    target.copy_(source)


def restore(state: DecodeState, snapshot: dict[str, torch.Tensor], counters: dict,
            chunks: list[dict[str, torch.Tensor]], chunk_tokens: int) -> torch.Tensor:
    """Fill a fresh `state` from a snapshot and its chunks; returns the last logits."""
    device = state.layers[0].window.device
    state.num_tokens = int(counters["num_tokens"])
    for name, layer in _layer_groups(state):
        _fill(layer.window, snapshot[f"{name}.window"])
        layer.num_window = int(counters[f"{name}.num_window"])
        for cname, comp in _compressors(name, layer):
            per = _entries_per_chunk(comp, chunk_tokens)
            for index, chunk in enumerate(chunks):
                _fill(comp.entries[:, index * per : (index + 1) * per], chunk[cname])
                if comp.entry_scale is not None:
                    _fill(comp.entry_scale[:, index * per : (index + 1) * per], chunk[f"{cname}.scale"])
            tail = snapshot[f"{cname}.tail"]
            start = len(chunks) * per
            _fill(comp.entries[:, start : start + tail.shape[1]], tail)
            if comp.entry_scale is not None:
                _fill(comp.entry_scale[:, start : start + tail.shape[1]], snapshot[f"{cname}.tail_scale"])
            comp.partial_kv.copy_(snapshot[f"{cname}.partial_kv"])
            comp.partial_gate.copy_(snapshot[f"{cname}.partial_gate"])
            if comp.overlap_kv is not None:
                comp.overlap_kv.copy_(snapshot[f"{cname}.overlap_kv"])
                comp.overlap_gate.copy_(snapshot[f"{cname}.overlap_gate"])
            comp.num_entries, comp.num_partial, comp.has_overlap = counters[cname]
        if layer.engram is not None:
            layer.engram.tokens.copy_(snapshot[f"{name}.e.tokens"])
            layer.engram.conv.copy_(snapshot[f"{name}.e.conv"])
            layer.engram.num_tokens = int(counters[f"{name}.e"])
    state.mtp_pending = snapshot["mtp_pending"].to(device) if "mtp_pending" in snapshot else None
    return snapshot["last_logits"].to(device, copy=True)  # never hand out the memory tier's tensor
