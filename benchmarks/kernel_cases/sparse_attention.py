"""Sparse attention cases at V4-Flash shapes (64 heads x head_dim 512, one shared K=V row per token).

Decode: one query per sequence, B = 1 and 8, K = 640 slots (128 window + 512 indexer top-k, CSA) and 8320
(128 + 8192 compressed entries: HCA at 1M tokens), distinct random rows of a 131072-row cache, sorted;
bf16 rows and FP8-packed rows (584 bytes). Prefill: 4096 queries, each its causal 128-key window plus 512
random compressed entries. `tiny=True` shrinks every shape for a CPU run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch

from benchmarks.kernel_cases import Case
from v4.kernels.sparse_attention import (PACKED_DIM, quantize_kv_fp8, sparse_attention, sparse_attention_fp8,
                                      sparse_attention_fp8_reference, sparse_attention_reference)

HEADS, DIM = 64, 512
WINDOW, TOPK, HCA_ENTRIES = 128, 512, 8192
CACHE_ROWS = 131072  # rows the decode indices are drawn from (1 GiB of bf16 rows at B = 8)
PREFILL_QUERIES, PREFILL_ENTRIES = 4096, 1024


def cases(device: str, tiny: bool = False) -> list[Case]:
    """Decode bf16 (B 1/8 x K 640/8320), decode FP8 rows, prefill bf16."""
    out = [_decode_case(device, batch, WINDOW + entries, False, tiny)
           for batch in (1, 8) for entries in (TOPK, HCA_ENTRIES)]
    out += [_decode_case(device, batch, WINDOW + entries, True, tiny)
            for batch, entries in ((1, HCA_ENTRIES), (8, TOPK), (8, HCA_ENTRIES))]
    out.append(_prefill_case(device, tiny))
    return out


def _sizes(fp8: bool, tiny: bool) -> tuple[int, int]:
    """(heads, head_dim): tiny keeps D = 512 for the FP8 layout, which fixes it."""
    return (8, DIM if fp8 else 64) if tiny else (HEADS, DIM)


def _decode_inputs(device: str, batch: int, slots: int, fp8: bool, tiny: bool, seed: int):
    heads, dim = _sizes(fp8, tiny)
    num_keys = 4 * slots if tiny else CACHE_ROWS
    generator = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, 1, heads, dim, device=device, generator=generator).to(torch.bfloat16)
    kv = torch.randn(batch, num_keys, dim, device=device, generator=generator).to(torch.bfloat16)
    if fp8:
        kv = quantize_kv_fp8(kv)
    rows = [torch.randperm(num_keys, device=device, generator=generator)[:slots].sort().values for _ in range(batch)]
    indices = torch.stack(rows).view(batch, 1, slots).to(torch.int32)
    sink = torch.randn(heads, device=device, generator=generator)
    return q, kv, indices, sink, dim**-0.5


def _decode_case(device: str, batch: int, slots: int, fp8: bool, tiny: bool) -> Case:
    if tiny:
        batch, slots = min(batch, 2), slots // 32
    inputs = _decode_inputs(device, batch, slots, fp8, tiny, seed=0)
    q, kv, indices = inputs[:3]
    kernel, reference = (sparse_attention_fp8, sparse_attention_fp8_reference) if fp8 else (sparse_attention,
                                                                                           sparse_attention_reference)
    row_bytes = PACKED_DIM if fp8 else q.shape[-1] * 2
    used = int((indices >= 0).sum())
    # Fewest bytes: each gathered row once per query (all heads share it), q and out once, the indices.
    bytes_moved = used * row_bytes + 2 * q.numel() * q.element_size() + indices.numel() * indices.element_size()
    # q.k and p.v: 2 flops per multiply-add each, per head, per used slot, over D (softmax ignored).
    flops = 4 * q.shape[2] * q.shape[3] * used
    compiled = torch.compile(reference, dynamic=False)
    rows = "e4m3 rows" if fp8 else "bf16 rows"  # not "fp8": the dots run on bf16 tensor cores
    return Case(kernel_name="sparse_attention_fp8" if fp8 else "sparse_attention",
                shape=f"decode B={batch} H={q.shape[2]} D={q.shape[3]} K={slots} T={kv.shape[1]} {rows}",
                bytes_moved=bytes_moved, flops=flops, bound="memory",
                kernel=lambda: kernel(*inputs), eager=lambda: reference(*inputs), compiled=lambda: compiled(*inputs),
                check=lambda: _check(kernel, reference, _decode_inputs(device, batch, slots, fp8, tiny, seed=1)),
                goal=">= 70% of copy bandwidth", extra={"used_slots": used})


def _prefill_inputs(device: str, tiny: bool, seed: int):
    """Keys [chunk's own S rows | E compressed entries]; query s sees keys s-127..s and 512 random entries."""
    heads, dim = _sizes(False, tiny)
    queries, entries, window, topk = (16, 64, 8, 32) if tiny else (PREFILL_QUERIES, PREFILL_ENTRIES, WINDOW, TOPK)
    generator = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, queries, heads, dim, device=device, generator=generator).to(torch.bfloat16)
    kv = torch.randn(1, queries + entries, dim, device=device, generator=generator).to(torch.bfloat16)
    positions = torch.arange(queries, device=device)
    window_keys = positions[:, None] - torch.arange(window - 1, -1, -1, device=device)[None, :]
    window_keys = torch.where(window_keys >= 0, window_keys, -1)  # the first queries have fewer keys
    scores = torch.rand(queries, entries, device=device, generator=generator)
    chosen = scores.topk(topk, dim=-1).indices.sort(dim=-1).values + queries
    indices = torch.cat([window_keys, chosen], dim=-1).view(1, queries, window + topk).to(torch.int32)
    sink = torch.randn(heads, device=device, generator=generator)
    return q, kv, indices, sink, dim**-0.5


def _prefill_case(device: str, tiny: bool) -> Case:
    inputs = _prefill_inputs(device, tiny, seed=0)
    q, kv, indices = inputs[:3]
    used = int((indices >= 0).sum())
    distinct = int(indices[indices >= 0].unique().numel())
    # Fewest bytes: q and out once, the indices, every distinct key row once.
    bytes_moved = (2 * q.numel() * q.element_size() + indices.numel() * indices.element_size()
                   + distinct * q.shape[-1] * 2)
    flops = 4 * q.shape[2] * q.shape[3] * used  # as for decode
    compiled = torch.compile(sparse_attention_reference, dynamic=False)
    return Case(kernel_name="sparse_attention", shape=f"prefill S={q.shape[1]} H={q.shape[2]} D={q.shape[3]} "
                f"K={indices.shape[-1]} T={kv.shape[1]} bf16 rows", bytes_moved=bytes_moved, flops=flops,
                bound="compute", kernel=lambda: sparse_attention(*inputs),
                eager=lambda: sparse_attention_reference(*inputs), compiled=lambda: compiled(*inputs),
                check=lambda: _check(sparse_attention, sparse_attention_reference, _prefill_inputs(device, tiny, 1)),
                goal="report FLOP/s", extra={"used_slots": used})


def _check(kernel, reference, inputs) -> float:
    out, ref = kernel(*inputs).float(), reference(*inputs).float()
    return ((out - ref).norm() / ref.norm()).item()
